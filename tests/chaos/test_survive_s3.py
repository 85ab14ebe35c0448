"""Durability against moto's real S3 server: partitions whose changelog was trimmed behind S3
snapshots survive the loss of their runner's machine, and an S3 outage only delays snapshots.
Each test checks the WHOLE word count output: exactly the expected multiset of lines."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest
from chaos_support import (
    APP,
    check_exactly_once,
    eventually,
    finish,
    make_input,
    owners,
    paced_send,
    wait_for_progress,
)

from conftest import BUCKET, Moto
from wallaroo import ops
from wallaroo.dev import DevCluster
from wallaroo.natsio import Nats

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]
SNAPSHOTS = ["--snapshot-every", "4", "--snapshot-seconds", "0.5"]


def seeded() -> tuple[int, random.Random]:
    seed = int(os.environ.get("WALLAROO_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (replay with WALLAROO_CHAOS_SEED={seed})")
    return seed, random.Random(seed)


def s3_keys(moto: Moto, prefix: str) -> list[str]:
    import boto3  # noqa: TID251 - the test looks at what runners wrote to S3

    s3: Any = boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def s3_cluster(tmp_path: Path, moto: Moto, monkeypatch: pytest.MonkeyPatch) -> DevCluster:
    monkeypatch.setenv("WALLAROO_S3_ENDPOINT", moto.url)  # runner processes inherit it
    return DevCluster(tmp_path / "c", runners=2, member_ttl=1.0,
                      state_store=f"s3://{BUCKET}/chaos", runner_args=SNAPSHOTS)


def test_machine_loss_restores_from_s3_snapshots(s3_cluster: DevCluster, moto: Moto) -> None:
    seed, rng = seeded()
    lines, expected = make_input(rng, 40_000)

    async def body(cluster: DevCluster) -> list[str]:
        nats = await Nats.connect(cluster.url)
        try:
            m = await ops.deploy(nats, APP)
            sender = asyncio.create_task(paced_send(nats, m, lines, seconds=6))
            await eventually(lambda: _has_snapshots(moto), 30, "snapshots in S3")
            victim = cluster.runners[rng.randrange(2)]
            victim.kill()  # the machine is gone: nothing of it is left but what S3 and NATS hold
            await eventually(lambda: _not_owned_by(nats, m.slug, victim.runner_id), 30,
                             "its partitions moved")
            await wait_for_progress(nats, m.slug)
            await sender
            return await finish(nats, m)
        finally:
            await nats.close()

    with s3_cluster as cluster:
        outputs = asyncio.run(body(cluster))
    check_exactly_once(outputs, expected, seed)
    assert any("restoring" in p.read_text() or "restored" in p.read_text()
               for p in (s3_cluster.state_dir / "logs").glob("*.log"))


async def _has_snapshots(moto: Moto) -> bool:
    return any(k.endswith(".snap") for k in await asyncio.to_thread(s3_keys, moto, "chaos/"))


async def _not_owned_by(nats: Nats, slug: str, runner: str) -> bool:
    return runner not in set((await owners(nats, slug)).values())


def test_s3_outage_delays_snapshots_and_loses_nothing(s3_cluster: DevCluster, moto: Moto) -> None:
    seed, rng = seeded()
    lines, expected = make_input(rng, 40_000)

    async def body(cluster: DevCluster) -> list[str]:
        nats = await Nats.connect(cluster.url)
        try:
            m = await ops.deploy(nats, APP)
            sender = asyncio.create_task(paced_send(nats, m, lines, seconds=6))
            await eventually(lambda: _has_snapshots(moto), 30, "snapshots in S3")
            moto.stop()
            await wait_for_progress(nats, m.slug)  # processing goes on without S3
            await eventually(lambda: _logged(cluster, "snapshot failed"), 30, "a failed snapshot")
            moto.start()  # same port, same bucket (moto keeps its state in the process)
            await sender
            return await finish(nats, m)
        finally:
            await nats.close()

    with s3_cluster as cluster:
        before = 0
        outputs = asyncio.run(body(cluster))
        before = len(s3_keys(moto, "chaos/"))
    check_exactly_once(outputs, expected, seed)
    assert before > 0


async def _logged(cluster: DevCluster, text: str) -> bool:
    return any(text in p.read_text() for p in (cluster.state_dir / "logs").glob("*.log"))
