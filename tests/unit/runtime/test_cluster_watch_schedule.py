"""ClusterWatch on an injected clock: when a runner's control loop wakes before its next tick
(a member's entry due to lapse, a member gone), and when a member counts as silent."""

from __future__ import annotations

import asyncio

import pytest

from wallaroo.core.names import LEADER_BUCKET, MEMBERS_BUCKET
from wallaroo_runtime.cluster import FORGET_AFTER, LAPSE_RECHECK, LAPSE_WINDOW, ClusterWatch

TTL, TICK = 1.0, 0.25
BEAT = b'{"id": "r2", "ts": 1.0}'


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch() -> tuple[ClusterWatch, Clock]:
    clock = Clock()
    return ClusterWatch(TTL, clock), clock


def sleep_after_a_tick(w: ClusterWatch) -> float:
    """What the loop sleeps after a tick that begins now (and takes no time)."""
    w.begin()
    return w.timeout(TICK)


def test_with_nothing_due_the_loop_sleeps_a_tick() -> None:
    w, clock = watch()
    assert sleep_after_a_tick(w) == TICK


def test_a_member_that_stops_writing_wakes_the_loop_when_its_entry_lapses() -> None:
    w, clock = watch()
    w.written(MEMBERS_BUCKET, "r2", BEAT)  # its last beat
    clock.now += 0.9
    assert sleep_after_a_tick(w) == pytest.approx(TTL - 0.9)


def test_past_its_lapse_the_loop_looks_again_soon_until_the_window_ends() -> None:
    w, clock = watch()
    w.written(MEMBERS_BUCKET, "r2", BEAT)
    clock.now += TTL  # the early tick: the server may not have removed the entry yet
    assert sleep_after_a_tick(w) == LAPSE_RECHECK
    clock.now += LAPSE_WINDOW - 0.01
    assert sleep_after_a_tick(w) == LAPSE_RECHECK
    clock.now += 0.01  # a tick began once the window was over: it is not waited for
    assert sleep_after_a_tick(w) == TICK


def test_each_write_puts_the_lapse_back_by_the_ttl() -> None:
    w, clock = watch()
    w.written(LEADER_BUCKET, "leader", b"r1")
    clock.now += 0.9
    w.written(LEADER_BUCKET, "leader", b"r1")  # renewed
    assert sleep_after_a_tick(w) == TICK


def test_a_lapse_during_a_long_tick_is_looked_at_soon_after() -> None:
    w, clock = watch()
    w.begin()
    w.written(MEMBERS_BUCKET, "r2", BEAT)
    clock.now += TTL + LAPSE_WINDOW + 0.1  # the tick that began before the lapse ends now
    assert w.timeout(TICK) == LAPSE_RECHECK


def test_a_deleted_entry_wakes_the_loop_and_is_not_waited_for() -> None:
    w, clock = watch()
    w.written(MEMBERS_BUCKET, "r2", BEAT)
    w.written(MEMBERS_BUCKET, "r2", None)  # it left
    assert w.woken.is_set()
    assert sleep_after_a_tick(w) == TICK


def test_pause_returns_when_woken_not_after_its_timeout() -> None:
    async def run() -> None:
        w, clock = watch()
        stop = asyncio.Event()
        asyncio.get_running_loop().call_soon(w.woken.set)
        await asyncio.wait_for(w.pause(stop, 3600.0), 30)
        assert not stop.is_set()

    asyncio.run(run())


def test_pause_returns_on_stop() -> None:
    async def run() -> None:
        w, clock = watch()
        stop = asyncio.Event()
        stop.set()
        await asyncio.wait_for(w.pause(stop, 3600.0), 30)

    asyncio.run(run())


class Members:
    """The members bucket as the server holds it: what `silent` reads."""

    def __init__(self, entries: dict[str, bytes]) -> None:
        self.entries, self.reads = entries, 0

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        assert bucket == MEMBERS_BUCKET
        self.reads += 1
        return self.entries.get(key)


def test_a_member_is_silent_once_its_last_beat_heard_is_older_than_the_ttl() -> None:
    w, clock = watch()
    w.written(MEMBERS_BUCKET, "r2", BEAT)
    clock.now += TTL - 0.01
    assert not w.lapsed("r2", BEAT)
    clock.now += 0.01
    assert w.lapsed("r2", BEAT)  # the server, a little late, still holds that beat
    assert w.lapsed("r2", None)  # removed


def test_a_beat_the_watch_missed_is_no_silence() -> None:
    w, clock = watch()
    w.written(MEMBERS_BUCKET, "r2", BEAT)
    clock.now += 2 * TTL
    assert not w.lapsed("r2", b'{"id": "r2", "ts": 1.25}')  # stored, never heard
    assert not w.lapsed("r3", b"{}")  # never heard at all: the server's expiry decides


def test_overdue_says_whether_any_member_may_be_silent() -> None:
    w, clock = watch()
    assert not w.overdue()
    w.written(MEMBERS_BUCKET, "r2", BEAT)
    assert not w.overdue()
    clock.now += TTL
    assert w.overdue()


def test_silent_reads_the_entry_only_once_the_ttl_has_passed() -> None:
    async def run() -> None:
        w, clock = watch()
        members = Members({"r2": BEAT})
        w.written(MEMBERS_BUCKET, "r2", BEAT)
        assert not await w.silent(members, "r2")  # type: ignore[arg-type]
        assert members.reads == 0
        clock.now += TTL
        assert await w.silent(members, "r2")  # type: ignore[arg-type]
        members.entries["r2"] = b'{"id": "r2", "ts": 2.0}'  # a beat it missed
        assert not await w.silent(members, "r2")  # type: ignore[arg-type]

    asyncio.run(run())


def test_the_writes_of_members_long_gone_are_let_go() -> None:
    w, clock = watch()
    w.written(MEMBERS_BUCKET, "r2", BEAT)
    clock.now += FORGET_AFTER * TTL - 0.01
    sleep_after_a_tick(w)
    assert (MEMBERS_BUCKET, "r2") in w.heard
    clock.now += 0.01
    sleep_after_a_tick(w)
    assert (MEMBERS_BUCKET, "r2") not in w.heard
