"""The warm-up benchmark's app (benches/warmup.rs): bench/app.py's routes behind an import
that burns CPU, as a real Python app importing its framework does.

Importing this module spends WARMUP_BURN_S seconds of CPU (default 1.5; CPU time, not
wall time, so a worker at a low priority takes longer but does the same work), then
writes an empty file `imported.<pid>` into WARMUP_MARKERS (if set): the benchmark learns
from it when gunicorn's new workers, which import the app after the fork (no --preload),
are able to serve.
"""

import os
import time

from app import wsgi  # noqa: F401  (the routes every peer serves)

_end = time.process_time() + float(os.environ.get("WARMUP_BURN_S", "1.5"))
while time.process_time() < _end:
    pass

if os.environ.get("WARMUP_MARKERS"):
    open(os.path.join(os.environ["WARMUP_MARKERS"], f"imported.{os.getpid()}"), "w").close()
