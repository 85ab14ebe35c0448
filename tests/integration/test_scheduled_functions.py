"""Scheduled functions on real runners: the leader fires each tick once across the cluster, also
when the leader is SIGKILLed and another takes over (the new leader fires the same tick with
the same call id, which runs once)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from wallaroo.control import apps
from wallaroo.control.status import wait_rollout
from wallaroo.core.names import LEADER_BUCKET, LEADER_KEY
from wallaroo.core.wire import Holder
from wallaroo.local.dev import DevCluster
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats

APP = Path(__file__).parent / "apps" / "scheduled.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def runs(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def wait_for_runs(log: Path, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(runs(log)) < n:
        assert time.monotonic() < deadline, f"{n} scheduled runs within {timeout}s: {runs(log)}"
        time.sleep(0.1)


async def deploy_and_find_leader(url: str) -> str:
    nats = await Nats.connect(url)
    try:
        manifest = await apps.deploy(nats, APP)
        await wait_rollout(nats, manifest, 60, min_ready=2)
        raw = await nats.kv_get(LEADER_BUCKET, LEADER_KEY)
        assert raw is not None
        return Holder.from_wire(raw).runner_id
    finally:
        await nats.close()


def test_each_tick_runs_once_across_the_cluster_and_a_leader_failover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "ticks.log"
    monkeypatch.setenv("TICK_LOG", str(log))
    with DevCluster(tmp_path / "c", runners=2, member_ttl=1.0) as cluster:
        leader = asyncio.run(deploy_and_find_leader(cluster.url))
        wait_for_runs(log, 3)
        before = len(runs(log))
        cluster.restart_runner(next(i for i, r in enumerate(cluster.runners)
                                    if r.runner_id == leader), kill=True)
        wait_for_runs(log, before + 4)
    ids = runs(log)
    twice = [c for c, n in Counter(ids).items() if n > 1]
    assert not twice, f"ticks run more than once: {twice}"
    assert all(c.startswith("fd-") for c in ids)


def test_a_tick_fired_again_by_a_new_leader_is_one_call(nats_server: NatsServer) -> None:
    """The old leader published tick T but died before recording it: the next leader
    publishes T again with the same derived id, and the stream keeps one message."""
    from wallaroo.core.calls import CallClient
    from wallaroo.core.names import SCHEDULES_BUCKET, AppNames
    from wallaroo.core.packaging import load_deployable
    from wallaroo_runtime.scheduler import fire_due, tick_call_id

    deployed, _ = load_deployable(APP)
    names = AppNames(deployed.slug)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await apps.ensure_streams(nats, deployed.slug)
            await nats.kv_bucket(SCHEDULES_BUCKET)
            client = CallClient(nats)
            first = await fire_due(client, deployed.slug, deployed.specs, now=1000.2)
            assert first == [tick_call_id(deployed.slug, "tick", 1000)]
            assert await fire_due(client, deployed.slug, deployed.specs, now=1000.7) == []
            await nats.kv_delete(SCHEDULES_BUCKET, f"{deployed.slug}.tick")  # "never recorded"
            assert await fire_due(client, deployed.slug, deployed.specs, now=1000.7) == first
            assert await nats.stream_last_seq(names.calls_stream) == 1
            assert await fire_due(client, deployed.slug, deployed.specs, now=1001.1) != first
        finally:
            await nats.close()

    asyncio.run(body())
