"""asyncio helpers both sides use."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

T = TypeVar("T")


def doubling(first: float, cap: float) -> Iterator[float]:
    """Pauses between looks or tries: `first`, doubling up to `cap`, then `cap` for ever."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 2, cap)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile: a stop never waits out a pause."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def unless_stopped(stop: asyncio.Event, work: Awaitable[list[T]]) -> list[T]:
    """`work`'s result, or [] once `stop` is set first (the work is cancelled): a stop never
    waits out a long poll in hand."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled ourselves: the work goes too
        task.cancel()
        raise
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    # Waited for, not awaited: a cancellation of our caller meanwhile must reach it, not be
    # taken for the work's own.
    await asyncio.wait({task})
    if not task.cancelled() and (err := task.exception()) is not None:
        raise err  # what the work raised instead of stopping
    return []
