"""The PartsSink on a real nats-server, to a local directory and to moto's S3 server: one
whole part per output message, named from its msg id; a replay of everything delivered
(consumer and its kept ack floor gone) writes nothing new and counts every message skipped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from connector_support import app_streams, async_, cancel, eventually, publish_outputs

from conftest import BUCKET, REGION, Moto
from wallaroo.connectors import PartsSink
from wallaroo.core.names import CONNECTORS_BUCKET
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime.connectors import SinkStats, run_sink
from wallaroo_runtime.connectors.framing import PARTS_STAGING, part_name
from wallaroo_runtime.connectors.progress import sink_durable
from wallaroo_runtime.statestore import S3Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
SLUG = "parts_app"


def outputs(first: int, last: int) -> list[list[bytes | str]]:
    return [[f"m{n}a", f"m{n}b\n".encode()] for n in range(first, last)]


def expected_parts(n: int) -> dict[str, bytes]:
    """Part name -> content of the first n output messages (commits 1..n of s1.0)."""
    return {part_name(SLUG, 0, f"s1.0:{c}:0", ".txt"): f"m{c - 1}a\nm{c - 1}b\n".encode()
            for c in range(1, n + 1)}


async def deliver_all(nats: Nats, cfg: PartsSink, last_seq: int) -> SinkStats:
    """Run the sink until it handled output seq `last_seq`, then stop it in order; its counts."""
    stop, stats = asyncio.Event(), SinkStats()
    task = asyncio.create_task(run_sink(nats, SLUG, "parts", cfg, stop, stats))

    async def handled() -> bool:
        return stats.last_seq >= last_seq

    await eventually(handled, f"output seq {last_seq} handled")
    stop.set()
    await asyncio.wait_for(task, 5)
    return stats


async def forget_progress(nats: Nats) -> None:
    """As if the sink lost every ack: it reads the output stream from its start again."""
    names = await app_streams(nats, SLUG)
    await nats.delete_consumer(names.out_stream, sink_durable("parts"))
    await nats.kv_delete(CONNECTORS_BUCKET, f"{SLUG}.{sink_durable('parts')}")


def test_local_parts_are_written_once_and_a_replay_writes_nothing(
        nats_server: NatsServer, tmp_path: Path) -> None:
    target = tmp_path / "job-out"
    cfg = PartsSink("parts", str(target))

    def found() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in target.glob("part-*")}

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, SLUG)
            await publish_outputs(nats, SLUG, "parts", outputs(0, 6))
            task = asyncio.create_task(run_sink(nats, SLUG, "parts", cfg, asyncio.Event()))
            await eventually(async_(lambda: len(found()) >= 6), "6 parts")
            await cancel(task)  # killed: restarts from its ack floor
            await publish_outputs(nats, SLUG, "parts", outputs(6, 10), first_commit=7)
            stats = await deliver_all(nats, cfg, 10)
            assert found() == expected_parts(10) and stats.rejected == 0
            assert not list((target / PARTS_STAGING).iterdir())

            before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
            await forget_progress(nats)
            stats = await deliver_all(nats, cfg, 10)
            assert (stats.skipped, stats.delivered) == (10, 0)
            assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before
        finally:
            await nats.close()

    asyncio.run(body())



def test_s3_parts_are_put_once_and_a_replay_puts_nothing(nats_server: NatsServer, moto: Moto) -> None:
    cfg = PartsSink("parts", f"s3://{BUCKET}/jobs/words/", endpoint_url=moto.url)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        s3 = S3Store(BUCKET, "jobs/words", endpoint_url=moto.url, region=REGION)
        try:
            await app_streams(nats, SLUG)
            await s3.put("part-other_app-s1p0-000000000001-0.txt", b"not ours\n")
            await publish_outputs(nats, SLUG, "parts", [*outputs(0, 5), []])
            first = await deliver_all(nats, cfg, 6)
            assert first.delivered == 6  # the empty one gives no part
            want = expected_parts(5)
            assert await s3.list("") == sorted([*want, "part-other_app-s1p0-000000000001-0.txt"])
            assert {k: await s3.get(k) for k in want} == want

            await forget_progress(nats)
            again = await deliver_all(nats, cfg, 6)
            assert (again.skipped, again.delivered) == (5, 1)
        finally:
            await s3.close()
            await nats.close()

    asyncio.run(body())
