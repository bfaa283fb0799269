"""The Python app every peer serves in the benchmark (see BENCHMARKS.md).

The same two routes as `handover demo-worker`, so every server is loaded the same way:

    GET /             -> 200 "hello from pid N"
    GET /slow?ms=N    -> 200 after N ms (at most 60 s)

Every response carries `X-Worker-Pid`, which the load generator uses to tell generations
apart. `app` is the ASGI app (uvicorn, gunicorn's UvicornWorker); `wsgi` is the same app
for gunicorn's sync workers.
"""

import asyncio
import os
import time
from urllib.parse import parse_qs

MAX_SLOW_MS = 60_000


def route(path, query):
    """(status, body, delay in seconds) for a GET of path?query."""
    pid = os.getpid()
    if path == "/":
        return 200, f"hello from pid {pid}\n", 0.0
    if path == "/slow":
        try:
            ms = min(int(parse_qs(query)["ms"][0]), MAX_SLOW_MS)
        except (KeyError, ValueError):
            return 400, "usage: /slow?ms=N\n", 0.0
        return 200, f"slow {ms}ms from pid {pid}\n", ms / 1000
    return 404, "not found\n", 0.0


def headers(body):
    return [
        ("content-type", "text/plain"),
        ("content-length", str(len(body))),
        ("x-worker-pid", str(os.getpid())),
    ]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    status, body, delay = route(scope["path"], scope["query_string"].decode())
    if delay:
        await asyncio.sleep(delay)
    body = body.encode()
    raw = [(k.encode(), v.encode()) for k, v in headers(body)]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


def wsgi(environ, start_response):
    status, body, delay = route(environ["PATH_INFO"], environ.get("QUERY_STRING", ""))
    if delay:
        time.sleep(delay)
    body = body.encode()
    start_response(f"{status} {REASONS[status]}", headers(body))
    return [body]
