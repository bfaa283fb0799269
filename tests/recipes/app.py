"""The same tiny app for gunicorn (WSGI: `app:app`) and uvicorn (ASGI: `app:asgi`).

`/` answers "hello from pid N", `/slow?ms=N` after N ms; every response names its
process in an X-Worker-Pid header (tests/recipes.rs tells generations apart by it).
APP_IMPORT_DELAY=2 sleeps 2 s at import, like a large framework being imported.
"""

import asyncio
import os
import time
from urllib.parse import parse_qs

time.sleep(float(os.environ.get("APP_IMPORT_DELAY", "0")))


def _answer(path, query):
    """(body, delay in seconds) for a request."""
    pid = os.getpid()
    if path == "/slow":
        ms = int(parse_qs(query).get("ms", ["0"])[0])
        return f"slept {ms} ms in pid {pid}\n".encode(), ms / 1000
    return f"hello from pid {pid}\n".encode(), 0


def _headers(body):
    return [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Worker-Pid", str(os.getpid())),
    ]


def app(environ, start_response):
    body, delay = _answer(environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", ""))
    time.sleep(delay)
    start_response("200 OK", _headers(body))
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return  # lifespan: nothing to set up
    body, delay = _answer(scope["path"], scope["query_string"].decode())
    await asyncio.sleep(delay)
    headers = [(k.lower().encode(), v.encode()) for k, v in _headers(body)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
