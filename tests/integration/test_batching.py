"""Micro-batch steps on a real runner and nats-server: a batch fires at max_size at once, and
a partial one by its timer (a message the partition publishes into its own input once
max_wait passed since the batch's first record), with nothing more sent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APP = Path(__file__).parent / "apps" / "batching.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def scenario(url: str) -> list[str]:
    nats = await Nats.connect(url)
    try:
        manifest = await apps.deploy(nats, APP)
        await ingest.send(nats, manifest, "words", [b"apple", b"avocado", b"apricot", b"banana"], "p1")
        deadline = time.monotonic() + 60
        while True:
            out = (await collect_outputs(nats, manifest))["batches"]
            if len(out) >= 2:
                return sorted(out)
            assert time.monotonic() < deadline, f"batches within 60s, got {out}"
            await asyncio.sleep(0.1)
    finally:
        await nats.close()


def test_full_batches_fire_at_once_and_partial_ones_by_their_timer(tmp_path: Path) -> None:
    with DevCluster(tmp_path / "c", runners=1) as cluster:
        got = asyncio.run(scenario(cluster.url))
    # "banana" waits alone: only its timer (0.5 s after it was stored) can fire it.
    assert got == ["a #1: apple,avocado,apricot", "b #1: banana"]
