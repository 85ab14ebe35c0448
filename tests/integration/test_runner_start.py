"""A runner's first moments: the leader assigns a deploy in the very tick that loads it, so a
new app's workers start a tick (0.25 s) sooner than the leader's next round would allow, and
the runner tells the deployer it runs it in that tick too, not at its next heartbeat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wallaroo.control import apps, status
from wallaroo.core.keys import Trust
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime import cluster
from wallaroo_runtime.cluster import Leadership
from wallaroo_runtime.runner import Runner

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
APP = Path(__file__).resolve().parents[2] / "examples" / "word_count" / "word_count.py"


def test_the_leader_assigns_a_deploy_in_the_tick_that_loads_it(nats_server: NatsServer) -> None:
    parts, owners, running, ready = asyncio.run(_one_tick(nats_server.url))
    assert owners == {part: "r0" for part in parts}  # every partition, after one tick
    assert running == set(parts)  # and the runner started a worker for each
    assert ready == ["r0"]  # and said so: what `wallaroo run` and `deploy` wait for


async def _one_tick(url: str) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str],
                                       set[tuple[int, int]], list[str]]:
    nats = await Nats.connect(url)
    manifest = await apps.deploy(nats, APP)
    runner = Runner(url, "r0", trust=Trust.anyone())
    await runner._join(nats, asyncio.Event())
    leadership = Leadership(nats, "r0")
    try:
        await runner._tick(nats, leadership)
        assigned = await cluster.read_assignment(nats, manifest.slug)
        running = set(runner.hosts[manifest.slug].tasks)
        ready = (await status.rollout(nats, manifest)).ready
    finally:
        await runner._leave(nats, leadership)  # stops the workers, closes the connection
    parts = [(st.index, p) for st in manifest.stages for p in st.run_parts]
    return parts, dict(assigned.owners), running, ready
