"""A function the leader calls every second; each run logs its call id to $TICK_LOG."""

from __future__ import annotations

import os

import wallaroo

app = wallaroo.App("scheduled")


@app.function(schedule=wallaroo.Period(seconds=1))
def tick() -> None:
    call = wallaroo.current_call()
    assert call is not None
    with open(os.environ["TICK_LOG"], "a") as f:
        f.write(f"{call.call_id} {os.getpid()}\n")
