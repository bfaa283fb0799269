"""The ASGI app of tests/takeover.rs, run by plain `uvicorn --fd 3` (which closes idle
keep-alive connections at SIGTERM: the race handover's takeover answers).

Every response names its process (`X-Worker-Pid`) and the request's path (`X-Path`).
Every request is appended to the file APP_LOG (one line: `pid method path`) *before*
its body is read, so a test can tell exactly which requests reached an app at all.

- `POST /sum` (any path starting with /sum): reads the whole body, answers
  `LENGTH SHA256HEX` of what arrived.
- `GET /stream`: a response without Content-Length (close-delimited for an HTTP/1.0
  request), one line every 50 ms until the file APP_RELEASE exists (at most 30 s), then
  `end`.
- anything else: `hello from pid N`.
"""

import asyncio
import hashlib
import os

LOG = os.environ.get("APP_LOG")
RELEASE = os.environ.get("APP_RELEASE")


def _log(method, path):
    if LOG:
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {method} {path}\n".encode())
        finally:
            os.close(fd)


def _headers(path, length=None):
    h = [
        (b"content-type", b"text/plain"),
        (b"x-worker-pid", str(os.getpid()).encode()),
        (b"x-path", path.encode()),
    ]
    if length is not None:
        h.append((b"content-length", str(length).encode()))
    return h


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return  # lifespan: nothing to set up
    method, path = scope["method"], scope["path"]
    _log(method, path)
    if path.startswith("/sum"):
        digest, length = hashlib.sha256(), 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            if not message.get("more_body", False):
                break
        body = f"{length} {digest.hexdigest()}\n".encode()
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": _headers(path)})
        for i in range(600):
            if RELEASE and os.path.exists(RELEASE):
                break
            line = f"line {i} from pid {os.getpid()}\n".encode()
            await send({"type": "http.response.body", "body": line, "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"end\n"})
        return
    else:
        body = f"hello from pid {os.getpid()}\n".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": _headers(path, len(body))}
    )
    await send({"type": "http.response.body", "body": body})
