"""Durability with moto's real S3 server as the state store, on the sequence-window app (per key
values 1..N; the whole output is checked window by window): a lost machine's partitions are
restored by a fresh runner from S3 snapshots plus the changelog tail, and an S3 outage only
delays snapshots (the changelog is kept until one is written) while processing goes on."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from chaos_support import seeded
from sequence_chaos import TTL, N, Stream, check_windows, eventually, progress, run_scenario

from conftest import BUCKET, Moto
from wallaroo.local.dev import DevCluster, RunnerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]
# Every partition's compaction in the runners' helper processes (the default leaves small
# states to the runner): the helper reads and writes S3 while runners die around it.
SNAPSHOTS = ["--snapshot-every", "4", "--snapshot-seconds", "0.5", "--offload-compaction-bytes", "0"]
PREFIX = "chaos"
KEYED = 8  # the sequence-window app's keyed partitions


def s3_keys(moto: Moto) -> list[str]:
    import boto3  # noqa: TID251 - the test looks at what runners wrote to S3

    s3: Any = boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


async def snapshots_in_s3(moto: Moto) -> bool:
    return any(k.endswith(".snap") for k in await asyncio.to_thread(s3_keys, moto))


async def every_keyed_partition_in_s3(moto: Moto, partitions: int = KEYED) -> bool:
    """Has each keyed partition a snapshot in S3? Then whichever runner is lost, what it ran
    has state there for its successor to restore (a runner lost right after joining may own
    partitions that never committed)."""
    snapped = {k.split("/")[-2] for k in await asyncio.to_thread(s3_keys, moto)
               if k.endswith(".snap") and k.split("/")[-3] == "1"}
    return len(snapped) >= partitions


@pytest.fixture
def s3_cluster(tmp_path: Path, moto: Moto, monkeypatch: pytest.MonkeyPatch) -> DevCluster:
    monkeypatch.setenv("WALLAROO_S3_ENDPOINT", moto.url)  # runner processes inherit it
    return DevCluster(tmp_path / "c", runners=2, member_ttl=TTL,
                      state_store=f"s3://{BUCKET}/{PREFIX}", runner_args=SNAPSHOTS)


def logged(cluster: DevCluster, text: str) -> bool:
    return any(text in p.read_text() for p in (cluster.state_dir / "logs").glob("*.log"))


def test_a_lost_machine_is_restored_from_s3_by_a_fresh_runner(s3_cluster: DevCluster,
                                                               moto: Moto) -> None:
    """Proves: with the changelog trimmed behind S3 snapshots, some compacted by the runners'
    helper processes, a runner whose machine is gone (SIGKILL; runners keep nothing on local
    disk) is replaced by a fresh one that restores from S3 and the changelog tail, exactly
    once, in order."""
    seed, rng = seeded()

    fresh: list[RunnerProcess] = []

    async def chaos(s: Stream) -> None:
        await eventually(lambda: every_keyed_partition_in_s3(moto), 30, "every partition in S3")
        await eventually(lambda: asyncio.to_thread(logged, s3_cluster, "written in the background"),
                         30, "a compaction in a helper process")
        s.release()
        await progress(s)
        s.mid_stream("the machine loss")
        fresh.append(s3_cluster.restart_runner(rng.randrange(2), kill=True))
        print(f"machine lost; {fresh[0].runner_id} starts in its place")
        await progress(s)

    with s3_cluster as cluster:
        lines = asyncio.run(run_scenario(cluster.url, chaos, spread=2, hold_at=N * 3 // 4))
    check_windows(lines, seed)
    # The fresh runner itself restored a partition with state, from a snapshot in S3.
    log = fresh[0].log_file.read_text()
    assert re.search(r"restored [1-9]\d* commits \(snapshot: commit [1-9]\d*\)", log), log[-3000:]


def test_an_s3_outage_delays_snapshots_and_loses_nothing(s3_cluster: DevCluster,
                                                         moto: Moto) -> None:
    """Proves: while S3 is down, snapshots fail (said in the log) and the changelog is kept;
    processing goes on; once S3 is back, snapshots resume. Output exactly once, in order."""
    seed, _ = seeded()

    async def chaos(s: Stream) -> None:
        await eventually(lambda: snapshots_in_s3(moto), 30, "snapshots in S3")
        before = set(await asyncio.to_thread(s3_keys, moto))
        moto.stop()
        s.mid_stream("the S3 outage")
        await progress(s)  # processing goes on without S3
        await eventually(lambda: asyncio.to_thread(logged, s3_cluster, "snapshot failed"), 30,
                         "a failed snapshot")
        moto.start()  # same port; moto keeps its buckets in this process
        await eventually(lambda: new_keys(moto, before), 30, "snapshots resumed")

    with s3_cluster as cluster:
        lines = asyncio.run(run_scenario(cluster.url, chaos, spread=2))
    check_windows(lines, seed)


async def new_keys(moto: Moto, before: set[str]) -> bool:
    """Snapshots are named by commit number: a new name is a new snapshot."""
    return bool(set(await asyncio.to_thread(s3_keys, moto)) - before)
