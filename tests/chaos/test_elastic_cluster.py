"""Runners join and leave a running cluster: rescaling, a dead leader, a paused zombie. Each
test checks the WHOLE output of word count: the multiset of "word => n" lines is exactly the
expected one (nothing lost, nothing twice), so every key's final count is right too."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from chaos_support import (
    APP,
    check_exactly_once,
    eventually,
    finish,
    leader,
    make_input,
    owners,
    paced_send,
    seeded,
    wait_for_progress,
)

from wallaroo.control import apps
from wallaroo.core.names import MEMBERS_BUCKET
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]
TTL = 1.0


async def runners_owning(nats: Nats, slug: str) -> set[str]:
    return set((await owners(nats, slug)).values())


def test_grow_to_three_and_shrink_to_one_while_streaming(tmp_path: Path) -> None:
    seed, rng = seeded()
    lines, expected = make_input(rng, 60_000)

    async def body(cluster: DevCluster) -> list[str]:
        nats = await Nats.connect(cluster.url)
        try:
            m = await apps.deploy(nats, APP)
            sender = asyncio.create_task(paced_send(nats, m, lines, seconds=8))
            await wait_for_progress(nats, m.slug)
            cluster.scale_to(3)
            await eventually(lambda: _spread_over(nats, m.slug, 3), 30, "3 runners own partitions")
            await wait_for_progress(nats, m.slug)
            cluster.scale_to(1)
            await eventually(lambda: _spread_over(nats, m.slug, 1), 30, "1 runner owns all")
            assert not sender.done(), "input ended before the shrink: pace it slower"
            await sender
            return await finish(nats, m)
        finally:
            await nats.close()

    with DevCluster(tmp_path / "c", runners=1, member_ttl=TTL) as cluster:
        outputs = asyncio.run(body(cluster))
    check_exactly_once(outputs, expected, seed)


async def _spread_over(nats: Nats, slug: str, n: int) -> bool:
    return len(await runners_owning(nats, slug)) == n


def test_killing_the_leader_elects_another_and_moves_its_partitions(tmp_path: Path) -> None:
    seed, rng = seeded()
    lines, expected = make_input(rng, 40_000)

    async def body(cluster: DevCluster) -> list[str]:
        nats = await Nats.connect(cluster.url)
        try:
            m = await apps.deploy(nats, APP)
            await eventually(lambda: _spread_over(nats, m.slug, 3), 30, "3 runners own partitions")
            sender = asyncio.create_task(paced_send(nats, m, lines, seconds=5))
            await wait_for_progress(nats, m.slug)
            old = await leader(nats)
            victim = next(i for i, r in enumerate(cluster.runners) if r.runner_id == old)
            cluster.runners[victim].kill()
            took = await eventually(lambda: _led_by_other(nats, old), 10 * TTL + 5, "new leader")
            print(f"leader {old} SIGKILLed; {await leader(nats)} leads after {took:.2f}s")
            await eventually(lambda: _not_owned_by(nats, m.slug, old), 30, "partitions moved")
            await sender
            return await finish(nats, m)
        finally:
            await nats.close()

    with DevCluster(tmp_path / "c", runners=3, member_ttl=TTL) as cluster:
        outputs = asyncio.run(body(cluster))
    check_exactly_once(outputs, expected, seed)


async def _led_by_other(nats: Nats, old: str | None) -> bool:
    now = await leader(nats)
    return now is not None and now != old


async def _not_owned_by(nats: Nats, slug: str, runner: str | None) -> bool:
    return runner not in await runners_owning(nats, slug)


def test_a_paused_zombie_cannot_commit_after_the_new_owner_starts(tmp_path: Path) -> None:
    seed, rng = seeded()
    lines, expected = make_input(rng, 40_000)

    async def body(cluster: DevCluster) -> list[str]:
        nats = await Nats.connect(cluster.url)
        try:
            m = await apps.deploy(nats, APP)
            await eventually(lambda: _spread_over(nats, m.slug, 2), 30, "2 runners own partitions")
            sender = asyncio.create_task(paced_send(nats, m, lines, seconds=6))
            await wait_for_progress(nats, m.slug)
            zombie = cluster.runners[rng.randrange(2)]
            zombie.signal(signal.SIGSTOP)
            await eventually(lambda: _not_owned_by(nats, m.slug, zombie.runner_id), 30,
                             "the paused runner's partitions moved")
            await wait_for_progress(nats, m.slug)  # the new owner commits
            zombie.signal(signal.SIGCONT)  # the zombie wakes up believing it owns them
            await sender
            return await finish(nats, m)
        finally:
            await nats.close()

    with DevCluster(tmp_path / "c", runners=2, member_ttl=TTL) as cluster:
        outputs = asyncio.run(body(cluster))
    check_exactly_once(outputs, expected, seed)


def test_a_silent_runner_is_declared_gone_within_its_ttl(tmp_path: Path) -> None:
    async def body(cluster: DevCluster) -> float:
        nats = await Nats.connect(cluster.url)
        try:
            await eventually(lambda: _members(nats, 2), 30, "2 members")
            cluster.runners[1].kill()
            return await eventually(lambda: _members(nats, 1), 10 * TTL, "the dead runner gone")
        finally:
            await nats.close()

    with DevCluster(tmp_path / "c", runners=2, member_ttl=TTL) as cluster:
        took = asyncio.run(body(cluster))
    assert took <= TTL + 1.5, f"declared gone after {took:.2f}s with a {TTL}s TTL"


async def _members(nats: Nats, n: int) -> bool:
    return len(await nats.kv_keys(MEMBERS_BUCKET)) == n
