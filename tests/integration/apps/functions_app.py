"""Functions for the integration tests of the serverless half."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import wallaroo

app = wallaroo.App("fntest")


@app.function()
def square(x: int) -> int:
    return x * x


@app.function(retries=wallaroo.Retries(max_retries=2, initial_delay=0.05, backoff_coefficient=1.0))
def flaky(counter: str, fail_times: int) -> int:
    """Fails `fail_times` times (counted in a file), then returns the attempt it succeeded on."""
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n <= fail_times:
        raise ConnectionError(f"attempt {n} fails")
    call = wallaroo.current_call()
    assert call is not None
    return call.attempt


class AppSpecificError(Exception):
    """Defined in the app: a caller that did not import the app cannot rebuild it."""


@app.function()
def boom(message: str) -> None:
    raise ValueError(message)


@app.function()
def custom_boom() -> None:
    raise AppSpecificError("only the runner knows this class")


@app.function(timeout=0.5, retries=1)
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function()
async def nap(seconds: float, marker: str = "") -> str:
    await asyncio.sleep(seconds)
    if marker:
        Path(marker).write_text("finished")
    return "rested"


@app.function()
def whoami() -> list[object]:
    call = wallaroo.current_call()
    assert call is not None
    return [call.call_id, call.attempt, call.delivery, os.getpid()]


@app.function()
def append_id(path: str, value: int) -> int:
    """Appends its call id to `path` (an idempotent side effect keyed by the call id)."""
    call = wallaroo.current_call()
    assert call is not None
    with open(path, "a") as f:
        f.write(call.call_id + "\n")
    return value


@app.function()
def big(n: int) -> bytes:
    return b"x" * n


@app.function()
def length(data: bytes) -> int:
    return len(data)


@app.function()
def die() -> None:
    """Kills the runner running it: every delivery of this call loses a runner."""
    os.kill(os.getpid(), signal.SIGKILL)


@app.function()
def slow_append(path: str, seconds: float) -> str:
    """Appends "<call id> <runner pid>" to `path`, works `seconds`, returns what it wrote."""
    call = wallaroo.current_call()
    assert call is not None
    line = f"{call.call_id} {os.getpid()}"
    with open(path, "a") as f:
        f.write(line + "\n")
    time.sleep(seconds)
    return line


@app.function()
def sleeper(marker: str, seconds: float) -> None:
    """Sleeps in its thread, then writes `marker`: only killing its process stops it."""
    time.sleep(seconds)
    Path(marker).write_text("woke")


@app.function(concurrency=1, timeout=0.5)
def single_slot(gate: str) -> str:
    """One slot per runner and a short timeout: a timed-out thread must not keep the slot.
    Given a gate path it waits (at most 60 s) for that file, so it outlives its timeout."""
    deadline = time.monotonic() + 60
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return gate


@app.function(concurrency=1)
def queued(marker: str, seconds: float) -> str:
    """One at a time per runner: a second call waits for the first."""
    Path(marker).write_text("ran")
    time.sleep(seconds)
    return marker


@app.function()
def spin(seconds: float) -> int:
    """Busy (holding the GIL as much as Python lets it) for `seconds`."""
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        n += 1
    return n


@app.cls(concurrency=2)
class Model:
    @wallaroo.enter()
    def load(self) -> None:
        self.pid = os.getpid()
        self.calls = 0

    @wallaroo.method()
    def predict(self, x: int) -> list[int]:
        self.calls += 1
        return [self.pid, self.calls, x * 2]


@app.local_entrypoint()
def main() -> None:
    print(square.remote(4))
    print(list(square.map(range(10))))
    try:
        custom_boom.remote()
    except AppSpecificError as err:  # the app's own class, rebuilt in `wallaroo run`
        print(f"caught {type(err).__name__}: {err}")


@app.function(serializer="json")
def tally(counts: dict[str, int], bonus: int = 0) -> dict[str, int]:
    """JSON in, JSON out: callers that may call it cannot make runners unpickle anything."""
    return {**counts, "total": sum(counts.values()) + bonus}
