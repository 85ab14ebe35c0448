"""A restore re-publishes the newest commit's outputs only while its inputs are unacked. Once
acked, every output was stored, and after JetStream's dedup window a second publish would be
stored twice; the app's streams here get a short window so the test can outlive it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wallaroo.control import apps, ingest
from wallaroo.core.names import AppNames
from wallaroo.core.packaging import load_app
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats

APP = Path(__file__).resolve().parents[2] / "examples" / "reverse" / "reverse.py"
DEDUP_WINDOW = 0.5
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def commit_one(worker: PartitionWorker) -> None:
    consumer = await worker.open_consumer()
    try:
        for _ in range(50):
            msgs = await consumer.fetch(16, 0.2)
            if msgs:
                await worker.handle(msgs)
                return
        raise AssertionError("no input arrived")
    finally:
        await consumer.close()


async def dedup_window_passed(nats: Nats, subject: str) -> None:
    """Until JetStream stores a second message with one msg id: the window has passed."""
    first = await nats.publish(subject, b"", msg_id="probe")
    for _ in range(200):
        if await nats.publish(subject, b"", msg_id="probe") != first:
            return
        await asyncio.sleep(DEDUP_WINDOW / 10)
    raise AssertionError(f"a msg id was still deduplicated after {200 * DEDUP_WINDOW / 10:.0f}s")


async def stored(nats: Nats, stream: str, subject: str) -> int:
    last = await nats.stream_last_seq(stream)
    return len([m async for m in nats.read_subject(stream, subject, last)])


def test_an_acked_commit_is_not_published_again_after_the_dedup_window(nats_server: NatsServer) -> None:
    app, _ = load_app(APP)
    names = AppNames(app.slug)
    stage = app.stages[0]
    sink_subject = names.out(app.sinks[0].name)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            for stream, (subjects, work_queue) in names.streams().items():
                await nats.ensure_stream(stream, subjects, work_queue=work_queue, dedup_window=DEDUP_WINDOW)
            manifest = await apps.deploy(nats, APP)  # keeps the streams made above
            first = PartitionWorker(nats, app, manifest.version, stage, 0, WorkerConfig())
            await first.restore()
            await ingest.send(nats, manifest, None, [b"abc", b"de"], "p1")
            await commit_one(first)  # committed, published, acked
            assert await stored(nats, names.out_stream, sink_subject) == 1

            await dedup_window_passed(nats, f"wl.{app.slug}.out.probe")
            again = PartitionWorker(nats, app, manifest.version, stage, 0, WorkerConfig())
            await again.restore()
            assert again.state.commit_no == 1  # it did restore that commit
            assert await stored(nats, names.out_stream, sink_subject) == 1
        finally:
            await nats.close()

    asyncio.run(body())
