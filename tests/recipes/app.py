"""The same tiny app for gunicorn (WSGI: `app:app`) and uvicorn (ASGI: `app:asgi`).

`/` answers "hello from pid N", `/slow?ms=N` after N ms, a POST echoes its body (the
load's POST clients check it comes back whole); every response names its
process in an X-Worker-Pid header (tests/recipes.rs tells generations apart by it).
APP_IMPORT_DELAY=2 sleeps 2 s at import, like a large framework being imported.
With APP_IMPORT_MARKERS=DIR, the first process of its parent to import (a gunicorn
master's first worker) sleeps APP_FIRST_IMPORT_DELAY instead, and every process writes
DIR/imported.PID once its import is over: workers that finish importing one after the
other, and a record of which have. APP_BALLAST_MIB=N holds N MiB, written at import (a
large app's code and data: shared by a preloaded gunicorn's workers, not by the others).
"""

import asyncio
import os
import time
from urllib.parse import parse_qs


def _import_delay():
    markers = os.environ.get("APP_IMPORT_MARKERS")
    delay = float(os.environ.get("APP_IMPORT_DELAY", "0"))
    if not markers:
        return delay
    try:
        os.close(os.open(os.path.join(markers, f"first.{os.getppid()}"), os.O_CREAT | os.O_EXCL))
        return float(os.environ.get("APP_FIRST_IMPORT_DELAY", "0"))
    except FileExistsError:
        return delay


time.sleep(_import_delay())
_BALLAST = b"\x01" * (int(os.environ.get("APP_BALLAST_MIB", "0")) << 20)
if os.environ.get("APP_IMPORT_MARKERS"):
    open(os.path.join(os.environ["APP_IMPORT_MARKERS"], f"imported.{os.getpid()}"), "w").close()


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
    if environ.get("REQUEST_METHOD") == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", _headers(body))
        return [body]
    body, delay = _answer(environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", ""))
    time.sleep(delay)
    start_response("200 OK", _headers(body))
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return  # lifespan: nothing to set up
    if scope["method"] == "POST":
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        delay = 0
    else:
        body, delay = _answer(scope["path"], scope["query_string"].decode())
        await asyncio.sleep(delay)
    headers = [(k.lower().encode(), v.encode()) for k, v in _headers(body)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
