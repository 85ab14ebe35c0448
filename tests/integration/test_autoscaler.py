"""The autoscaler with the local backend on a real cluster: a burst of input raises the runner
count within a bounded time; idle, it scales down to the minimum and then to zero; a new
message wakes it and gets processed."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

import wallaroo
from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.core import calls, observe
from wallaroo.local.dev import DevCluster, follow_wishes
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime.autoscale.backends import LocalBackend
from wallaroo_runtime.autoscale.loop import Autoscaler
from wallaroo_runtime.autoscale.policy import Policy

APP = Path(__file__).parent / "apps" / "slow.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
POLICY = Policy(min_runners=0, max_runners=3, target_catchup=1.0, down_stabilization=1.0,
                idle_to_zero=2.0, assumed_runner_rate=5.0)


async def until(cond, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, f"{what} within {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def test_burst_scales_up_idle_scales_to_zero_and_a_message_wakes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wallaroo.autoscaler")

    async def body(cluster: DevCluster) -> None:
        nats = await Nats.connect(cluster.url)
        scaler = Autoscaler(nats, LocalBackend(nats), POLICY)
        stop = asyncio.Event()
        loop = asyncio.create_task(scaler.run(stop, interval=0.2))
        # What `wallaroo dev` does: the pool follows the autoscaler's wishes in the control bucket.
        pool = asyncio.create_task(follow_wishes(nats, cluster.pool, stop))
        try:
            m = await apps.deploy(nats, APP)
            await ingest.send(nats, m, "in", [f"r{i}".encode() for i in range(3000)], "burst",
                           batch_size=10)
            took = await until(lambda: len(cluster.runners) >= 2, 30, "scale up on the burst")
            print(f"scaled up {took:.2f}s after the burst")
            await apps.wait_idle(nats, m, timeout=120)
            await until(lambda: len(cluster.runners) == 0, 60, "scale to zero when idle")
            await ingest.send(nats, m, "in", [b"wake up"], "late")
            await until(lambda: len(cluster.runners) >= 1, 30, "wake on lag")
            await apps.wait_idle(nats, m, timeout=60)
            outputs = (await collect_outputs(nats, m))["out"]
            assert sorted(outputs) == sorted([f"r{i}" for i in range(3000)] + ["wake up"])
            assert scaler.failures == 0
        finally:
            stop.set()
            await loop
            await pool
            await nats.close()

    with DevCluster(tmp_path / "c", runners=1, member_ttl=1.0) as cluster:
        asyncio.run(body(cluster))
    scaled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scale ")]
    assert any("-> 3 runners" in s or "-> 2 runners" in s for s in scaled), scaled
    assert all(":" in s and "lag" in s or "idle" in s for s in scaled), scaled


def test_a_function_call_wakes_a_pool_at_zero_runners(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls waiting in the calls stream are lag: the first call of an app scaled to zero
    wakes a runner (before any runner ever made the function's consumer)."""
    fns_app = Path(__file__).parent / "apps" / "functions_app.py"

    async def body(cluster: DevCluster) -> None:
        nats = await Nats.connect(cluster.url)
        scaler = Autoscaler(nats, LocalBackend(nats), POLICY)
        stop = asyncio.Event()
        loops = [asyncio.create_task(scaler.run(stop, interval=0.2)),
                 asyncio.create_task(follow_wishes(nats, cluster.pool, stop))]
        try:
            await apps.deploy(nats, fns_app)
            assert len(cluster.runners) == 0
            call = await asyncio.to_thread(wallaroo.Function.lookup("fntest", "square").spawn, 12)
            took = await until(lambda: len(cluster.runners) >= 1, 30, "a runner woken by the call")
            print(f"woken {took:.2f}s after the call")
            assert await asyncio.to_thread(call.get, 60) == 144
        finally:
            stop.set()
            await asyncio.gather(*loops)
            await nats.close()

    with DevCluster(tmp_path / "c", runners=0, member_ttl=1.0) as cluster:
        monkeypatch.setenv("WALLAROO_NATS", cluster.url)
        try:
            asyncio.run(body(cluster))
        finally:
            calls.close_portals()


def test_a_backlog_no_runner_consumes_yet_counts_as_lag(nats_server: NatsServer) -> None:
    """Before any runner made a partition's consumer (runners slow to start, or none), the
    backlog is read from the stream itself: never taken for idleness, and never idle for
    `wallaroo send --wait`."""
    async def body() -> list[observe.StageLag]:
        nats = await Nats.connect(nats_server.url)
        try:
            m = await apps.deploy(nats, APP)
            await ingest.send(nats, m, "in", [f"r{i}".encode() for i in range(30)], "early",
                              batch_size=10)
            return await observe.stage_lags(nats, m)
        finally:
            await nats.close()

    [lag] = asyncio.run(body())
    assert (lag.pending, lag.ack_pending, lag.missing) == (3, 0, 1)  # 3 messages of 10 records
