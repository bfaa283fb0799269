"""uvicorn draining keep-alive connections without failing a request (README "Recipes").

On SIGTERM uvicorn stops accepting, then its protocols' shutdown() closes every idle
keep-alive connection at once; a client that sends on one at that moment gets a reset
(one failed request per keep-alive connection per reload). No uvicorn option changes
that (`--timeout-graceful-shutdown` only bounds the wait for requests in flight).
Imported before the app, this module makes shutdown answer the next request on each
connection with `Connection: close` (uvicorn closes after such a response without the
header), and close a connection only if it is still idle a second later. Run `uvicorn --fd 3 uvicorn_drain:asgi` (it re-exports app.asgi).
"""

from uvicorn.protocols.http import h11_impl

IDLE_GRACE = 1.0
_draining = False


def _patch(module, protocol):
    cycle = module.RequestResponseCycle
    cycle_init = cycle.__init__
    close_now = protocol.shutdown

    cycle_send = cycle.send

    def __init__(self, *args, **kwargs):
        cycle_init(self, *args, **kwargs)
        if _draining:
            self.keep_alive = False

    async def send(self, message):
        # uvicorn closes a connection after a keep_alive = False response without
        # saying so: the client would send its next request into the closed socket.
        if message["type"] == "http.response.start" and not self.keep_alive:
            headers = list(message.get("headers", []))
            if not any(k.lower() == b"connection" for k, _ in headers):
                message = {**message, "headers": headers + [(b"connection", b"close")]}
        await cycle_send(self, message)

    def idle(self):
        return self.cycle is None or self.cycle.response_complete

    def shutdown(self):
        global _draining
        _draining = True
        if idle(self):
            self.loop.call_later(IDLE_GRACE, lambda: idle(self) and close_now(self))
        else:
            close_now(self)  # in flight: uvicorn's own keep_alive = False

    cycle.__init__ = __init__
    cycle.send = send
    protocol.shutdown = shutdown


_patch(h11_impl, h11_impl.H11Protocol)
try:  # httptools is there with uvicorn[standard] only
    from uvicorn.protocols.http import httptools_impl

    _patch(httptools_impl, httptools_impl.HttpToolsProtocol)
except ImportError:
    pass

from app import asgi  # noqa: E402,F401  (after the patch, like any app module)
