"""The changelog fence, deterministically: two owners of one partition on a real nats-server.
The one that restored earlier (a zombie) cannot commit once the other has, and publishes
nothing; the fenced append is the only owner check and it holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wallaroo.control import apps, ingest
from wallaroo.core.errors import FencedError
from wallaroo.core.names import AppNames
from wallaroo.core.packaging import load_app
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats

APP = Path(__file__).resolve().parents[2] / "examples" / "reverse" / "reverse.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def fetch_all(worker: PartitionWorker) -> list[object]:
    consumer = await worker.open_consumer()
    for _ in range(50):
        msgs = await consumer.fetch(16, 0.2)
        if msgs:
            return list(msgs)
    raise AssertionError("no input arrived")


def test_a_stale_owner_is_fenced_and_publishes_nothing(nats_server: NatsServer) -> None:
    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            manifest = await apps.deploy(nats, APP)
            app, _ = load_app(APP)
            stage = app.stages[0]
            zombie = PartitionWorker(nats, app, manifest.version, stage, 0, WorkerConfig())
            owner = PartitionWorker(nats, app, manifest.version, stage, 0, WorkerConfig())
            await zombie.restore()
            await owner.restore()

            await ingest.send(nats, manifest, None, [b"abc"], "p1")
            await owner.handle(await fetch_all(owner))  # type: ignore[arg-type]
            out = AppNames(manifest.slug).out_stream
            published = await nats.stream_last_seq(out)

            await ingest.send(nats, manifest, None, [b"xyz"], "p2")
            with pytest.raises(FencedError, match="another owner committed"):
                await zombie.handle(await fetch_all(zombie))  # type: ignore[arg-type]
            assert await nats.stream_last_seq(out) == published == 1

            await owner.restore()  # the rightful owner, restored, carries on
            await owner.handle(await fetch_all(owner))  # type: ignore[arg-type]
            assert await nats.stream_last_seq(out) == 2
        finally:
            await nats.close()

    asyncio.run(body())
