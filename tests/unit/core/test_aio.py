"""The asyncio helpers: a stop never waits out a pause or a long poll in hand."""

from __future__ import annotations

import asyncio

import pytest

from wallaroo.core.aio import unless_stopped


def test_a_stop_drops_the_poll_in_hand_and_cancels_it() -> None:
    async def body() -> tuple[list[int], bool]:
        stop, cancelled = asyncio.Event(), asyncio.Event()

        async def long_poll() -> list[int]:
            try:
                await asyncio.Event().wait()  # never answers by itself
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return [1]

        polling = asyncio.create_task(unless_stopped(stop, long_poll()))
        await asyncio.sleep(0)  # the poll is in hand
        stop.set()
        return await polling, cancelled.is_set()

    assert asyncio.run(body()) == ([], True)


def test_what_the_poll_read_before_the_stop_is_returned() -> None:
    async def body() -> list[int]:
        async def quick() -> list[int]:
            return [1, 2]

        return await unless_stopped(asyncio.Event(), quick())

    assert asyncio.run(body()) == [1, 2]


def test_cancelling_the_caller_cancels_the_poll_too() -> None:
    async def body() -> bool:
        cancelled = asyncio.Event()

        async def long_poll() -> list[int]:
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()
            return []

        caller = asyncio.create_task(unless_stopped(asyncio.Event(), long_poll()))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(0)
        return cancelled.is_set()

    assert asyncio.run(body())


def test_a_caller_cancelled_while_the_work_winds_down_is_cancelled() -> None:
    """After a stop, unless_stopped waits for the cancelled work to end; a cancellation of
    its own caller meanwhile must reach the caller, not pass for the work's."""
    async def body() -> None:
        stop, winding, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def slow_to_stop() -> list[int]:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                winding.set()
                await release.wait()  # e.g. a connection closing
                raise
            return [1]

        caller = asyncio.create_task(unless_stopped(stop, slow_to_stop()))
        await asyncio.sleep(0)
        stop.set()
        await winding.wait()
        caller.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(body())
