"""A step much slower than the member TTL and the input ack_wait, on real runner processes:
its user code runs off the runner's event loop, so the runner keeps beating (no membership
lapse, no partition moved) and keeps its inputs alive (no redelivery); outputs are exactly
once and `wallaroo status` shows the partition busy while its batch runs.

The issue's step takes 10 s per record; here 3 s (LONG_STEP_SECONDS), which is still 3x the
member TTL and the ack_wait (1 s), and one batch of three records runs for 9 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import collect_outputs
from wallaroo.control import apps, ingest, status
from wallaroo.core.names import ASSIGN_BUCKET, LEASES_BUCKET, MEMBERS_BUCKET, partition_key
from wallaroo.core.wire import Assignment, Holder, Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APP = Path(__file__).parent / "apps" / "long_step.py"
PART = (0, 0)
RECORDS = [b"a", b"b", b"c"]
RUNNERS = ["r0", "r1"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Watch:
    """What the cluster looked like, sampled while the slow batch ran."""

    members: list[list[str]] = field(default_factory=list)
    owners: set[str] = field(default_factory=set)  # of PART, per the leader's assignment
    holders: set[str] = field(default_factory=set)  # of PART's lease
    busy: list[str] = field(default_factory=list)  # status problem rows about PART


def test_a_step_slower_than_the_member_ttl_moves_nothing_and_outputs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("LONG_STEP_CALLS", str(calls))
    monkeypatch.setenv("LONG_STEP_SECONDS", "3")
    with DevCluster(tmp_path / "c", runners=2, member_ttl=1.0,
                    runner_args=["--ack-wait", "1"]) as cluster:
        outputs, watch = asyncio.run(body(cluster.url))
        cluster.check_runners()
        logs = {r.runner_id: r.log_file.read_text() for r in cluster.pool.runners}

    assert sorted(outputs) == ["A", "B", "C"]  # exactly once
    assert sorted(calls.read_text().split()) == ["a", "b", "c"]  # user code ran once per record
    assert watch.members and all(m == RUNNERS for m in watch.members), watch.members  # no lapse
    assert len(watch.owners) == 1 and watch.holders == watch.owners  # nothing moved
    assert any("one batch running for" in row for row in watch.busy), watch.busy
    for runner, log in logs.items():
        for sign in ("lost the leadership", "takes lease", "delivery gap", "heartbeat failed"):
            assert sign not in log, f"{runner}: {sign}\n{log[-3000:]}"


async def body(url: str) -> tuple[list[str], Watch]:
    nats = await Nats.connect(url)
    try:
        await until(lambda: both_members(nats), "both runners joined")
        manifest = await apps.deploy(nats, APP)
        await until(lambda: settled(nats, manifest), "the partition runs on its owner")
        watch = Watch()
        await ingest.send(nats, manifest, "in", RECORDS, ingest.fresh_producer_id())
        watching = asyncio.create_task(watch_cluster(nats, manifest, watch))
        await apps.wait_idle(nats, manifest, timeout=60)
        watching.cancel()
        return (await collect_outputs(nats, manifest))["out"], watch
    finally:
        await nats.close()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)


async def members(nats: Nats) -> list[str]:
    """The runners whose membership entry is there, each read directly (a key listing can
    come back short)."""
    return [r for r in RUNNERS if await nats.kv_get(MEMBERS_BUCKET, r) is not None]


async def both_members(nats: Nats) -> bool:
    return await members(nats) == RUNNERS


async def owner(nats: Nats, manifest: Manifest) -> str:
    raw = await nats.kv_get(ASSIGN_BUCKET, manifest.slug)
    return Assignment.from_wire(raw).owners.get(PART, "") if raw else ""


async def holder(nats: Nats, manifest: Manifest) -> str:
    raw = await nats.kv_get(LEASES_BUCKET, partition_key(manifest.slug, *PART))
    return Holder.from_wire(raw).runner_id if raw else ""


async def settled(nats: Nats, manifest: Manifest) -> bool:
    """Assigned over both runners, and the owner holds the lease (its worker runs)."""
    now = await owner(nats, manifest)
    return bool(now) and await holder(nats, manifest) == now and await both_members(nats)


async def watch_cluster(nats: Nats, manifest: Manifest, watch: Watch) -> None:
    """Sample membership, ownership and `wallaroo status` until cancelled."""
    while True:
        watch.members.append(await members(nats))
        watch.owners.add(await owner(nats, manifest))
        watch.holders.add(await holder(nats, manifest))
        problems = (await status.gather(nats)).problems
        watch.busy += [row[2] for row in problems if row[2].startswith("stage 0 partition 0:")]
        await asyncio.sleep(0.2)
