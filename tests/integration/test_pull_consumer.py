"""PullConsumer.fetch on a real nats-server: one pull request per fetch, however many messages
are waiting (the commit loop fetches once per commit, and each request is a round trip on a
loop every partition shares), every message once and in order, and an empty fetch when
nothing comes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PULLS = "$JS.API.CONSUMER.MSG.NEXT.IN.reader"


def with_consumer(server: NatsServer, body: Callable[[Nats, list[bytes]], Awaitable[None]]) -> None:
    """`body(nats, pulls)` with stream IN (a work queue) and its consumer "reader" made;
    `pulls` collects every pull request the server is sent for that consumer."""
    async def run() -> None:
        nats = await Nats.connect(server.url)
        pulls: list[bytes] = []
        try:
            await nats.ensure_stream("IN", ["in.>"], work_queue=True)
            stop = await nats.listen(PULLS, pulls.append)
            try:
                await body(nats, pulls)
            finally:
                await stop()
        finally:
            await nats.close()

    asyncio.run(run())


async def publish(nats: Nats, *payloads: bytes) -> None:
    for p in payloads:
        await nats.publish("in.a", p)


async def pulls_seen(nats: Nats, pulls: list[bytes], n: int) -> None:
    """The listener's copies of `n` pull requests arrived (they cross the server too)."""
    await nats.nc.flush()
    for _ in range(100):
        if len(pulls) >= n:
            return
        await asyncio.sleep(0.01)


def test_one_pull_brings_every_waiting_message(nats_server: NatsServer) -> None:
    async def body(nats: Nats, pulls: list[bytes]) -> None:
        await publish(nats, b"m0", b"m1", b"m2")
        consumer = await nats.fresh_consumer("IN", "reader", "in.a")
        try:
            got = await consumer.fetch(16, 5.0)
            assert [m.data for m in got] == [b"m0", b"m1", b"m2"]
            assert [m.consumer_seq for m in got] == [1, 2, 3]
            assert got[-1].pending == 0
            await pulls_seen(nats, pulls, 2)
            assert len(pulls) == 1, pulls
        finally:
            await consumer.close()

    with_consumer(nats_server, body)


def test_a_full_batch_leaves_the_rest_to_the_next_fetch_in_order(nats_server: NatsServer) -> None:
    async def body(nats: Nats, pulls: list[bytes]) -> None:
        await publish(nats, *(f"m{i}".encode() for i in range(5)))
        consumer = await nats.fresh_consumer("IN", "reader", "in.a")
        try:
            first = await consumer.fetch(2, 5.0)
            assert [m.data for m in first] == [b"m0", b"m1"]
            assert first[-1].pending == 3
            for m in first:
                await m.ack()
            rest = await consumer.fetch(16, 5.0)
            assert [m.data for m in rest] == [b"m2", b"m3", b"m4"]
            await pulls_seen(nats, pulls, 3)
            assert len(pulls) == 2, pulls
        finally:
            await consumer.close()

    with_consumer(nats_server, body)


def test_a_fetch_waits_for_the_first_message_or_comes_back_empty(nats_server: NatsServer) -> None:
    async def body(nats: Nats, pulls: list[bytes]) -> None:
        consumer = await nats.fresh_consumer("IN", "reader", "in.a")
        try:
            assert await consumer.fetch(16, 0.2) == []  # nothing came: the pull expired
            waiting = asyncio.create_task(consumer.fetch(16, 30.0))
            await pulls_seen(nats, pulls, 2)
            assert not waiting.done()
            await publish(nats, b"late")
            got = await asyncio.wait_for(waiting, 10)  # at once, not after 30 s
            assert [m.data for m in got] == [b"late"]
            assert len(pulls) == 2, pulls
        finally:
            await consumer.close()

    with_consumer(nats_server, body)
