"""Test app whose step takes LONG_STEP_SECONDS (default 10) per record, sleeping: the issue's
"a step taking 10 s per record". Each call is appended to $LONG_STEP_CALLS, so a test can
tell that user code ran once per record."""

import os
import time

import wallaroo as wl

SECONDS = float(os.environ.get("LONG_STEP_SECONDS", "10"))


@wl.computation(name="long step")
def long_step(text: str) -> str:
    calls = os.environ.get("LONG_STEP_CALLS")
    if calls:
        with open(calls, "a") as f:
            f.write(text + "\n")
    time.sleep(SECONDS)
    return text.upper()


app = wl.build_application(
    "long step", wl.source("in", wl.StreamSource()).to(long_step).to_sink(wl.StreamSink("out")),
)
