"""The NATS reads that recovery and the control loops rest on, on a real nats-server: changelog
reads by batched direct gets, KV key listings without a consumer (one direct get, or a scan of
the bucket past 1,024 keys), replaced consumers, and an assignment that keeps its owners while
NATS itself fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.js.api as jsapi  # noqa: TID251 - a bucket made the old way (no direct reads)
import pytest

from wallaroo.core.names import ASSIGN_BUCKET
from wallaroo.core.packaging import build_artifact, load_app
from wallaroo.core.wire import Assignment
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo.nats.client import DIRECT_BATCH
from wallaroo_runtime import cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
APP = Path(__file__).resolve().parents[2] / "examples" / "word_count" / "word_count.py"


def on_nats(server: NatsServer, body: Callable[[Nats], Awaitable[None]]) -> None:
    async def run() -> None:
        nats = await Nats.connect(server.url)
        try:
            await body(nats)
        finally:
            await nats.close()

    asyncio.run(run())


def test_read_subject_pages_through_one_subject_in_order(nats_server: NatsServer) -> None:
    async def body(nats: Nats) -> None:
        await nats.ensure_stream("LOG", ["log.>"])
        n = DIRECT_BATCH * 2 + 7  # three batches, the last one short
        for i in range(n):  # two subjects interleaved: only one is read
            await nats.publish("log.a", f"a{i}".encode(), msg_id=f"a{i}")
            await nats.publish("log.b", f"b{i}".encode())
        last = (await nats.last_on_subject("LOG", "log.a"))
        assert last is not None
        read = [m async for m in nats.read_subject("LOG", "log.a", last.seq)]
        assert [m.data for m in read] == [f"a{i}".encode() for i in range(n)]
        assert [m.msg_id for m in read[:2]] == ["a0", "a1"]
        assert [m.seq for m in read] == sorted(m.seq for m in read)
        middle = read[100].seq
        tail = [m.data async for m in nats.read_subject("LOG", "log.a", read[110].seq, start=middle)]
        assert tail == [f"a{i}".encode() for i in range(100, 111)]
        both = [m.subject async for m in nats.read_subject("LOG", "log.>", 4)]
        assert both == ["log.a", "log.b", "log.a", "log.b"]

    on_nats(nats_server, body)


def test_a_complete_read_that_ends_short_raises_instead_of_looking_done(nats_server: NatsServer) -> None:
    async def body(nats: Nats) -> None:
        await nats.ensure_stream("LOG", ["log.>"])
        for i in range(3):
            await nats.publish("log.a", f"{i}".encode())
        assert len([m async for m in nats.read_subject("LOG", "log.a", 10)]) == 3
        with pytest.raises(TimeoutError, match="stopped at seq 3 of 10"):
            _ = [m async for m in nats.read_subject("LOG", "log.a", 10, complete=True)]

    on_nats(nats_server, body)


def test_kv_keys_lists_live_keys_directly_and_by_watch(nats_server: NatsServer) -> None:
    async def body(nats: Nats) -> None:
        await nats.kv_bucket("NEW")
        await nats.js.create_key_value(jsapi.KeyValueConfig(bucket="OLD", history=5))
        for bucket in ("NEW", "OLD"):
            for key in ("a", "b", "c", "d"):
                await nats.kv_put(bucket, key, b"1")
            await nats.kv_put(bucket, "a", b"2")  # a newer revision is still one key
            assert await nats.kv_delete(bucket, "b")
            assert await nats.kv_keys(bucket) == ["a", "c", "d"], bucket
        assert await nats.kv_keys("MISSING") == []

    on_nats(nats_server, body)


def test_kv_keys_beyond_one_direct_answer_are_listed_by_a_scan_of_the_bucket(nats_server: NatsServer) -> None:
    async def body(nats: Nats) -> None:
        await nats.kv_bucket("MANY")
        keys = sorted(f"k{i:04d}" for i in range(1100))  # the server answers 1024 at most
        await asyncio.gather(*(nats.kv_put("MANY", k, b"") for k in keys))
        await asyncio.gather(*(nats.kv_put("MANY", k, b"again") for k in keys[:10]))  # history
        await nats.kv_delete("MANY", "k0003")
        await nats.kv_purge("MANY", "k1099")
        assert await nats.kv_keys("MANY") == [k for k in keys if k not in ("k0003", "k1099")]

    on_nats(nats_server, body)


def test_a_fresh_consumer_redelivers_what_the_old_one_held_at_once(nats_server: NatsServer) -> None:
    async def body(nats: Nats) -> None:
        await nats.ensure_stream("Q", ["q.>"], work_queue=True)
        for i in range(5):
            await nats.publish("q.x", f"{i}".encode())
        held = await nats.fresh_consumer("Q", "d", "q.x", ack_wait=60.0)
        first = await held.fetch(5, 1.0)
        assert len(first) == 5
        await held.close()  # all five stay unacked: held until ack_wait without a fresh one
        await nats.purge_subject_below("Q", "q.x", first[1].stream_seq)  # as if 0 was committed
        again = await nats.fresh_consumer("Q", "d", "q.x", ack_wait=60.0)
        redelivered = await again.fetch(10, 1.0)
        assert [m.data for m in redelivered] == [b"1", b"2", b"3", b"4"]
        assert [m.consumer_seq for m in redelivered] == [1, 2, 3, 4]
        await again.close()

    on_nats(nats_server, body)


def test_while_nats_fails_the_leader_moves_partitions_to_joiners_only(nats_server: NatsServer) -> None:
    app, _ = load_app(APP)
    _, manifest = build_artifact(app, APP)

    async def owners(nats: Nats) -> set[str]:
        raw = await nats.kv_get(ASSIGN_BUCKET, manifest.slug)
        assert raw is not None
        return set(Assignment.from_wire(raw).owners.values())

    async def body(nats: Nats) -> None:
        await cluster.ensure_buckets(nats, cluster.ClusterConfig())
        assert await cluster.publish_assignment(nats, manifest, ["r1", "r2"])
        # r2's beat is missing, but NATS failed lately: r2 keeps its partitions, r3 joins
        assert await cluster.publish_assignment(nats, manifest, ["r1", "r3"], keep_current=True)
        assert await owners(nats) == {"r1", "r2", "r3"}
        # NATS is fine again: a missing beat means a gone runner
        assert await cluster.publish_assignment(nats, manifest, ["r1", "r3"])
        assert await owners(nats) == {"r1", "r3"}
        assert not await cluster.publish_assignment(nats, manifest, [])  # nobody: left as is
        assert await owners(nats) == {"r1", "r3"}

    on_nats(nats_server, body)


def test_a_core_publish_cancelled_mid_flush_leaves_the_connection_working(
        nats_server: NatsServer) -> None:
    """A sink stopped while its publish waits for the server's PONG: the connection it
    shares with the runner's partitions must go on reading (nats-py's read loop died on the
    late PONG of a cancelled flush)."""
    async def body() -> list[bytes]:
        nats = await Nats.connect(nats_server.url)
        try:
            for _ in range(20):  # each try cancels one publish at its flush
                task = asyncio.create_task(nats.core_publish("ext.x", b"x", "id"))
                while not nats.nc._pongs:  # noqa: SLF001 - the flush is waiting for its PONG
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            got: list[bytes] = []

            async def received(m: Any) -> None:
                got.append(m.data)

            sub = await nats.nc.subscribe("ext.y", cb=received)
            await nats.core_publish("ext.y", b"after", "id2")
            await asyncio.wait_for(nats.nc.flush(), 5)
            await sub.unsubscribe()
            return got
        finally:
            await nats.close()

    assert asyncio.run(body()) == [b"after"]
