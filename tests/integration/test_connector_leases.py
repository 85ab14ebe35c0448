"""run_leased on a real nats-server: of two live runners only one runs a connector; the other
takes over once the first stops, and never takes the lease from a live holder; a holder that
finds its lease gone stops its connector."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from connector_support import eventually

from wallaroo.core.names import MEMBERS_BUCKET
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime import cluster
from wallaroo_runtime.cluster import ClusterConfig
from wallaroo_runtime.connectors import run_leased

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class CountingStop(asyncio.Event):
    """A stop event that counts how often a waiting lease asked whether it is still wanted:
    one question per try, so the test knows the other runner tried, without sleeping."""

    asked = 0

    def is_set(self) -> bool:
        self.asked += 1
        return super().is_set()


def test_one_runner_runs_a_connector_and_another_takes_over_when_it_stops(
        nats_server: NatsServer) -> None:
    # lease_patience 0: a partition lease would be taken at once; a connector's must not be.
    cfg = ClusterConfig(member_ttl=30.0, tick=0.05, lease_patience=0.0)
    running: list[str] = []

    def connector(runner: str, stop: asyncio.Event) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            running.append(runner)
            try:
                await stop.wait()
            finally:
                running.remove(runner)

        return run

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await cluster.ensure_buckets(nats, cfg)
            for runner in ("r1", "r2"):
                await nats.kv_put(MEMBERS_BUCKET, runner, b"{}")  # both alive
            stops = {"r1": CountingStop(), "r2": CountingStop()}
            first = asyncio.create_task(run_leased(nats, "r1", cfg, "app.sink.out",
                                                   connector("r1", stops["r1"]), stops["r1"]))
            await eventually(_true(lambda: running == ["r1"]), "r1 runs the connector")
            second = asyncio.create_task(run_leased(nats, "r2", cfg, "app.sink.out",
                                                    connector("r2", stops["r2"]), stops["r2"]))
            await eventually(_true(lambda: stops["r2"].asked > 10), "r2 tried 10 times")
            assert running == ["r1"]
            stops["r1"].set()
            await asyncio.wait_for(first, 5)
            await eventually(_true(lambda: running == ["r2"]), "r2 took over")
            stops["r2"].set()
            await asyncio.wait_for(second, 5)
            assert await nats.kv_entry("WL_LEASES", "app.sink.out") is None
            # A holder whose lease moved on (it was paused past its membership) stops.
            third = asyncio.create_task(run_leased(nats, "r1", cfg, "app.sink.out",
                                                   connector("r1", asyncio.Event()), CountingStop()))
            await eventually(_true(lambda: running == ["r1"]), "r1 runs it again")
            await nats.kv_put("WL_LEASES", "app.sink.out", b"r3")
            await asyncio.wait_for(third, 5)
            assert running == []
        finally:
            await nats.close()

    asyncio.run(body())


def _true(cond: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return cond()

    return check
