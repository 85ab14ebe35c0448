"""Test app whose user code takes ~2 ms per record, so one runner builds a backlog."""

import time

import wallaroo as wl


@wl.computation(name="slow echo")
def slow_echo(text: str) -> str:
    deadline = time.perf_counter() + 0.002
    while time.perf_counter() < deadline:  # busy: a sleeping runner would not be CPU-bound
        pass
    return text


app = wl.build_application(
    "slow", wl.source("in", wl.StreamSource()).to(slow_echo).to_sink(wl.StreamSink("out")),
)
