"""Version 1 of a function app (the deploy test ships version 2 over it)."""

import time
from pathlib import Path

import wallaroo

app = wallaroo.App("fnver")


@app.function()
def version(gate: str = "") -> int:
    """Returns 1; given a gate path, first waits (at most 60 s) for that file to exist, so
    the test decides when this call may finish."""
    deadline = time.monotonic() + 60
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return 1
