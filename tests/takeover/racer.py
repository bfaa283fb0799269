# A worker with the races real servers run at their stop (tests/takeover/races.rs), made
# certain instead of rare. It serves GET on keep-alive connections from the socket on
# fd 3, answering "pid N" (and X-Worker-Pid) after WORK_MS, and on SIGTERM does what MODE says:
#
#   read-and-drop        reads whatever waits on each connection and closes them all
#                        unanswered: Go's Shutdown, which closes as idle a connection
#                        whose next request it has just read.
#   serve-until-killed   stops accepting and keeps answering its keep-alive connections
#                        until it is killed at the graceful timeout: Node's server.close().
#
# LAZY_MS: a connection's next request is read only that long after the last answer, so
# that it surely waits unread when the worker is told to stop. A request with
# `Connection: close` (the relay's) is answered with it, and the connection closed.
import os
import selectors
import signal
import socket
import time

MODE = os.environ["MODE"]
WORK = int(os.environ.get("WORK_MS", "0")) / 1000
LAZY = int(os.environ.get("LAZY_MS", "0")) / 1000

listener = socket.socket(fileno=3)
listener.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
conns = {}  # socket -> {"buf": bytes, "due": when to answer, "wake": when to read again}
stopping = False


def on_term(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)


def drop_all():
    for s in list(conns):
        try:
            s.recv(65536)
        except OSError:
            pass
        s.close()
    os._exit(0)


def answer(s, c):
    body = f"pid {os.getpid()}\n".encode()
    close = "Connection: close\r\n" if c["close"] else ""
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
        f"X-Worker-Pid: {os.getpid()}\r\n{close}\r\n"
    ).encode()
    s.sendall(head + body)
    c["due"] = None
    if c["close"]:
        sel.unregister(s)
        del conns[s]
        s.close()
        return
    if LAZY:
        sel.unregister(s)
        c["wake"] = time.monotonic() + LAZY


def readable(s, c):
    data = s.recv(65536)
    if not data:
        sel.unregister(s)
        del conns[s]
        s.close()
        return
    c["buf"] += data
    if b"\r\n\r\n" in c["buf"] and c["due"] is None:
        head, c["buf"] = c["buf"].split(b"\r\n\r\n", 1)
        c["close"] = b"\r\nconnection: close" in head.lower()
        c["due"] = time.monotonic() + WORK


while True:
    if stopping and MODE == "read-and-drop":
        drop_all()
    if stopping and listener.fileno() >= 0:
        sel.unregister(listener)
        listener.close()
    now = time.monotonic()
    for s, c in list(conns.items()):
        if c["due"] is not None and c["due"] <= now:
            answer(s, c)
        if c.get("wake") is not None and c["wake"] <= now:
            c["wake"] = None
            sel.register(s, selectors.EVENT_READ)
    for key, _ in sel.select(timeout=0.005):
        if key.fileobj is listener:
            try:
                s, _ = listener.accept()
            except BlockingIOError:
                continue
            s.setblocking(False)
            conns[s] = {"buf": b"", "due": None, "wake": None, "close": False}
            sel.register(s, selectors.EVENT_READ)
        elif key.fileobj in conns:
            readable(key.fileobj, conns[key.fileobj])
