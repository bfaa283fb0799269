"""tests/recipes/app.py's ASGI app (`/`, `/slow?ms=N`, X-Worker-Pid), and a POST on any
path echoes its body, read whole first as a form handler reads its form (the bench's
POST clients check that it comes back unchanged). For the POST-behind-nginx scenarios:
`uvicorn --app-dir benches/peers post_app:asgi`.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "recipes"))
from app import asgi as recipe  # noqa: E402


async def asgi(scope, receive, send):
    if scope["type"] != "http" or scope["method"] != "POST":
        return await recipe(scope, receive, send)
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
        (b"x-worker-pid", str(os.getpid()).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
