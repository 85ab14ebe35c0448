"""ClusterWatch on a real nats-server, connected as a runner: the writes to the cluster
buckets reach it as they are made (the runner role may subscribe there), so a runner's
control loop wakes for a new assignment, a member gone, or a member's entry due to lapse,
instead of at its next tick; and a member that stopped beating is gone to the leader, and
loses the leadership and its connector leases, once its TTL has passed, not when the server
gets round to removing its entry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from wallaroo.core.names import ASSIGN_BUCKET, LEADER_BUCKET, LEADER_KEY, LEASES_BUCKET, MEMBERS_BUCKET
from wallaroo.core.wire import Holder
from wallaroo.local.auth import dev_auth
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime import cluster
from wallaroo_runtime.cluster import ClusterConfig, ClusterWatch, Leadership
from wallaroo_runtime.connectors import run_leased

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
TTL = 1.0
LONG_TICK = 3600.0  # a loop woken at all was woken by the watch


def with_watch(server: NatsServer, tmp_path: Path,
               body: Callable[[ClusterWatch, Nats, Nats], Awaitable[None]],
               server_ttl: float = TTL) -> None:
    """`body(watch, watcher, other)`: a watch started on a runner's connection, and another
    runner's connection that writes. `server_ttl`: the buckets' own (the server removes
    entries after it)."""
    async def run() -> None:
        creds = dev_auth(tmp_path).seed("runner")
        watcher = await Nats.connect(server.url, creds=creds)
        other = await Nats.connect(server.url, creds=creds)
        watch = ClusterWatch(TTL)
        try:
            await cluster.ensure_buckets(watcher, ClusterConfig(member_ttl=server_ttl))
            await watch.start(watcher)
            await watcher.nc.flush()  # the subscriptions are in before anything is written
            await body(watch, watcher, other)
        finally:
            await watch.stop()
            await other.close()
            await watcher.close()

    asyncio.run(run())


async def woken(watch: ClusterWatch) -> None:
    await asyncio.wait_for(watch.pause(asyncio.Event(), LONG_TICK), 20)


def test_a_new_assignment_wakes_the_loop(nats_server: NatsServer, tmp_path: Path) -> None:
    async def body(watch: ClusterWatch, watcher: Nats, other: Nats) -> None:
        watch.begin()
        await other.kv_put(ASSIGN_BUCKET, "app", b"{}")
        await woken(watch)
        assert watch.woken.is_set()

    with_watch(nats_server, tmp_path, body)


def test_a_member_that_leaves_wakes_the_loop(nats_server: NatsServer, tmp_path: Path) -> None:
    async def body(watch: ClusterWatch, watcher: Nats, other: Nats) -> None:
        watch.begin()
        await other.kv_put(MEMBERS_BUCKET, "r2", b"{}")
        await other.kv_delete(MEMBERS_BUCKET, "r2")
        await woken(watch)
        assert (MEMBERS_BUCKET, "r2") not in watch.heard

    with_watch(nats_server, tmp_path, body)


def test_a_silent_member_wakes_the_loop_when_its_entry_lapses(nats_server: NatsServer,
                                                              tmp_path: Path) -> None:
    async def body(watch: ClusterWatch, watcher: Nats, other: Nats) -> None:
        await other.kv_put(MEMBERS_BUCKET, "r2", b"{}")  # its last beat
        deadline = asyncio.get_running_loop().time() + 10
        while (MEMBERS_BUCKET, "r2") not in watch.heard:
            assert asyncio.get_running_loop().time() < deadline, "the beat was never heard"
            await asyncio.sleep(0.01)
        watch.begin()
        await woken(watch)
        assert not watch.woken.is_set()  # woken by the lapse's time, not by a write
        # The early tick finds it gone, or (nats-server a little late) the next one does.
        while "r2" in await cluster.live_members(watcher):
            assert asyncio.get_running_loop().time() < deadline + 10, "the entry never lapsed"
            await asyncio.sleep(0.05)

    with_watch(nats_server, tmp_path, body)


def beat(n: int) -> bytes:
    return f'{{"id": "r2", "ts": {n}}}'.encode()


def test_a_beating_member_stays_and_a_silent_one_goes(nats_server: NatsServer, tmp_path: Path) -> None:
    """The server holds entries for a minute here: r3, silent, is gone to the watch after
    its TTL all the same, while r2, beating, stays."""
    async def body(watch: ClusterWatch, watcher: Nats, other: Nats) -> None:
        loop = asyncio.get_running_loop()
        await other.kv_put(MEMBERS_BUCKET, "r3", b"{}")  # beats once, then falls silent
        started = loop.time()
        n = 0
        while loop.time() < started + 2 * TTL:  # r2 beats through two TTLs
            await other.kv_put(MEMBERS_BUCKET, "r2", beat(n))
            n += 1
            await asyncio.sleep(TTL / 4)
            assert "r2" in await cluster.live_members(watcher, watch)
        assert await watcher.kv_get(MEMBERS_BUCKET, "r3") is not None  # the server still has it
        assert "r3" not in await cluster.live_members(watcher, watch)
        assert "r3" in await cluster.live_members(watcher)  # without the watch: not yet gone
        assert not await cluster.is_live(watcher, "r3", watch)
        assert await cluster.is_live(watcher, "r2", watch)

    with_watch(nats_server, tmp_path, body, server_ttl=60.0)


def test_a_leader_that_stopped_beating_loses_the_leadership(nats_server: NatsServer,
                                                            tmp_path: Path) -> None:
    """r2 keeps renewing the leader key but no longer beats (its membership is its life):
    r1 takes the key over by compare-and-swap, and r2's next renewal fails."""
    async def body(watch: ClusterWatch, watcher: Nats, other: Nats) -> None:
        loop = asyncio.get_running_loop()
        await other.kv_put(MEMBERS_BUCKET, "r2", beat(0))
        revision = await other.kv_create(LEADER_BUCKET, LEADER_KEY, Holder("r2").to_wire())
        assert revision is not None
        r1 = Leadership(watcher, "r1", watch)
        deadline = loop.time() + 20
        while not await r1.campaign():
            assert loop.time() < deadline, "r1 never took the leadership"
            revision = await other.kv_update(LEADER_BUCKET, LEADER_KEY, Holder("r2").to_wire(), revision)
            assert revision is not None, "r2's renewal failed before r1 had the key"
            await asyncio.sleep(TTL / 8)
        assert await other.kv_update(LEADER_BUCKET, LEADER_KEY, Holder("r2").to_wire(), revision) is None

    with_watch(nats_server, tmp_path, body, server_ttl=60.0)


def test_a_connector_lease_of_a_silent_holder_is_taken(nats_server: NatsServer, tmp_path: Path) -> None:
    """The server holds r3's entry for a minute; its connector moves once r3 was silent for
    its TTL, as a partition's lease does."""
    cfg = ClusterConfig(member_ttl=60.0, tick=0.05)
    running, stop = asyncio.Event(), asyncio.Event()

    async def connector() -> None:
        running.set()
        await stop.wait()  # (a connector ends when told to stop)

    async def body(watch: ClusterWatch, watcher: Nats, other: Nats) -> None:
        await other.kv_put(MEMBERS_BUCKET, "r3", beat(1))  # beats once, then falls silent
        await other.kv_put(LEASES_BUCKET, "app.sink.out", Holder("r3").to_wire())
        run = asyncio.create_task(run_leased(watcher, "r1", cfg, "app.sink.out", connector, stop,
                                             watch))
        try:
            await asyncio.wait_for(running.wait(), 20)  # (not 60 s: the server's removal)
            assert await watcher.kv_get(MEMBERS_BUCKET, "r3") is not None  # still there
        finally:
            stop.set()
            await asyncio.wait_for(run, 10)

    with_watch(nats_server, tmp_path, body, server_ttl=60.0)
