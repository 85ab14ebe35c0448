"""Helpers of the connector tests: poll with a deadline, publish output messages the way a
partition does, read a stream back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import msgpack

from wallaroo.control import apps
from wallaroo.core.names import AppNames, internal_msg_id
from wallaroo.nats import Nats, Out, StoredMsg


async def eventually(cond: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def async_(cond: Callable[[], object]) -> Callable[[], Awaitable[bool]]:
    """A plain condition as `eventually` takes it."""
    async def check() -> bool:
        return bool(cond())

    return check


async def app_streams(nats: Nats, slug: str) -> AppNames:
    await apps.ensure_streams(nats, slug)
    return AppNames(slug)


async def publish_outputs(nats: Nats, slug: str, sink: str, batches: list[list[bytes | str]],
                          first_commit: int = 1, producer: str = "s1.0") -> list[str]:
    """Publish one output message per batch as partition `producer` would; their msg ids."""
    names = AppNames(slug)
    outs = [Out(names.out(sink), bytes(msgpack.packb(batch)), internal_msg_id(producer, first_commit + n, 0))
            for n, batch in enumerate(batches)]
    await nats.publish_all(outs)
    return [o.msg_id for o in outs]


async def stored(nats: Nats, stream: str, subject: str) -> list[StoredMsg]:
    """Every message on `subject` now in `stream`, in order."""
    last = await nats.stream_last_seq(stream)
    return [m async for m in nats.read_subject(stream, subject, last)]


async def cancel(task: asyncio.Task[None]) -> None:
    """Stop a connector abruptly, as a crash would (it records nothing more)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
