"""The WSGI app the system tests run under Debian's gunicorn (tests/system.rs).

`/` answers at once, `/slow?ms=N` after N ms (at most 60 s). X-Worker-Pid is the pid of
the gunicorn master, i.e. the process handover started and lists in `handover status`
(gunicorn's own workers are its children), so the test can tell which handover
generation served a request.
"""

import os
import time
from urllib.parse import parse_qs

# The unit's StateDirectory= (systemd sets $STATE_DIRECTORY; handover passes it on): each
# gunicorn worker that imports the app records its pid there, so the test can see that
# the hardened unit still lets the app write its state.
with open(os.path.join(os.environ["STATE_DIRECTORY"], "imported"), "a") as f:
    f.write(f"{os.getpid()}\n")


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/slow":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        time.sleep(min(int(query.get("ms", ["0"])[0]), 60_000) / 1000)
    master = os.getppid()
    body = f"hello from gunicorn, master pid {master}\n".encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Worker-Pid", str(master)),
        ],
    )
    return [body]
