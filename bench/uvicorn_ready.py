"""uvicorn serving bench/app.py on the inherited socket (fd 3), telling its manager when
it serves. Run by handover in the benchmark:

    handover run --workers 2 -- python bench/uvicorn_ready.py

Two things differ from `uvicorn --fd 3 app:app`, each for a measured reason:

1. READY=1. uvicorn never notifies. `--ready delay:…` would be a guess (too short: the old
   workers stop before the new ones accept; too long: every reload is slower than it need
   be), so this sends READY=1 to $NOTIFY_SOCKET right after uvicorn's own startup has
   returned, i.e. once fd 3 is registered with its event loop.
2. The socket. `--fd 3` wraps the fd as AF_UNIX whatever it is, so asyncio never sets
   TCP_NODELAY on accepted TCP connections, and every keep-alive response waits out
   Nagle + delayed ACK: 44 ms each here (183 req/s with wrk -c8). `socket.socket(fileno=3)`
   asks the kernel for the real family and protocol instead.
"""

import os
import socket
import sys

import uvicorn

LISTEN_FD = 3


def notify(state):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(state.encode())


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        if not self.should_exit:
            notify(f"READY=1\nSTATUS=uvicorn serving, pid {os.getpid()}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    config = uvicorn.Config("app:app", log_level="warning", access_log=False)
    Server(config).run(sockets=[socket.socket(fileno=LISTEN_FD)])
