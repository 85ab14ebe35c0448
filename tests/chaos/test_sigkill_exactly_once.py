"""Word count over >= 100k words while the runner is SIGKILLed at seeded random moments
(during ingest, processing and recovery) and restarted each time. Proves: the whole output,
as a multiset of "word => n" lines, equals the expected one: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from chaos_support import APP, check_exactly_once, finish, make_input, paced_send, seeded, wait_for_progress

from wallaroo.control import apps
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

WORDS = 100_000
KILLS = 5

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


async def chaos(cluster: DevCluster, rng: random.Random, lines: list[bytes]) -> list[str]:
    nats = await Nats.connect(cluster.url)
    try:
        manifest = await apps.deploy(nats, APP)
        # input keeps arriving for ~15 s, so all 5 kills land mid-stream even on a slow machine
        sender = asyncio.create_task(paced_send(nats, manifest, lines, seconds=15))
        kills = 0
        while kills < KILLS and not sender.done():
            await wait_for_progress(nats, manifest.slug)
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            cluster.restart_runner(0, kill=True)
            kills += 1
            print(f"kill {kills}/{KILLS}: runner SIGKILLed and restarted")
        await sender
        assert kills == KILLS, f"input ended after {kills} kills: pace the sender slower"
        return await finish(nats, manifest)
    finally:
        await nats.close()


def test_sigkill_during_word_count_is_exactly_once(tmp_path: Path) -> None:
    seed, rng = seeded()
    lines, expected = make_input(rng, WORDS)
    with DevCluster(tmp_path / "cluster", runners=1, member_ttl=1.0) as cluster:
        outputs = asyncio.run(chaos(cluster, rng, lines))
    check_exactly_once(outputs, expected, seed)
