"""uvicorn draining keep-alive connections without failing a request (README "Recipes").

On SIGTERM uvicorn stops accepting, then its protocols' shutdown() closes every idle
keep-alive connection at once; a client that sends on one at that moment gets a reset
(one failed request per keep-alive connection per reload). No uvicorn option changes
that (`--timeout-graceful-shutdown` only bounds the wait for requests in flight).
Imported before the app, this module makes shutdown answer the next request on each
connection with `Connection: close`, and close a connection only if it is still idle a
second later. Run `uvicorn --fd 3 uvicorn_drain:asgi` (it re-exports app.asgi).
"""

from uvicorn.protocols.http import h11_impl

IDLE_GRACE = 1.0
_draining = False


def _patch(module, protocol):
    cycle = module.RequestResponseCycle
    cycle_init = cycle.__init__
    close_now = protocol.shutdown

    def __init__(self, *args, **kwargs):
        cycle_init(self, *args, **kwargs)
        if _draining:
            self.keep_alive = False  # this response says Connection: close

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
    protocol.shutdown = shutdown


_patch(h11_impl, h11_impl.H11Protocol)
try:  # httptools is there with uvicorn[standard] only
    from uvicorn.protocols.http import httptools_impl

    _patch(httptools_impl, httptools_impl.HttpToolsProtocol)
except ImportError:
    pass

from app import asgi  # noqa: E402,F401  (after the patch, like any app module)
