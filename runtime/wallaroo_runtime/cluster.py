"""Membership, leadership, partition assignment and partition leases, all in NATS KV.

- Members heartbeat into a bucket whose entries lapse `member_ttl` after their last write:
  a runner that stops beating is gone within that bound. Runners hear those writes as they
  are made (ClusterWatch): one silent for the TTL is gone without waiting for the server to
  remove its entry, and the control loops wake for it rather than at their next tick.
- One leader at a time holds the `leader` key (create, then compare-and-swap renewals); it
  lapses like a membership, so a new leader takes over when the old one dies.
- The leader assigns every (stage, partition) of every app to a live member, each stage's
  partitions spread evenly (rendezvous hashing with a bound on each member's share): a join
  or leave moves only the partitions that must move.
- A runner runs a partition only while holding its lease. The old owner releases it after
  committing its batch in hand; a dead (or paused) holder's lease is taken over. Correctness
  never rests on the lease: the changelog fence stops a zombie's commit."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from wallaroo.core import observe, repartition
from wallaroo.core.calls import RESULT_TTL, CallClient
from wallaroo.core.names import (
    ASSIGN_BUCKET,
    BLOBS_BUCKET,
    LAYOUTS_BUCKET,
    LEADER_BUCKET,
    LEADER_KEY,
    LEASES_BUCKET,
    MEMBERS_BUCKET,
    SCHEDULES_BUCKET,
)
from wallaroo.core.wire import Assignment, Holder, Manifest, Part, Retirement
from wallaroo.nats import Nats
from wallaroo_runtime.ownership import spread

log = logging.getLogger("wallaroo.cluster")


@dataclass(frozen=True)
class ClusterConfig:
    member_ttl: float = 3.0  # a silent runner is gone after this long
    tick: float = 0.25  # how often a runner beats, campaigns and reads its assignment
    lease_patience: float = 30.0  # take a live holder's lease after waiting this long


# nats-server removes an entry that aged out a little after its age passes (0.25 s later,
# measured on this server with a 1 s TTL): from its expected lapse on, the loop looks again
# every LAPSE_RECHECK for up to LAPSE_WINDOW, rather than waiting a whole tick.
LAPSE_RECHECK = 0.05
LAPSE_WINDOW = 0.5
FORGET_AFTER = 10  # member TTLs after which a write heard is let go (its key long removed)


class ClusterWatch:
    """What a runner hears of the cluster buckets' writes as they are made, for two things.
    It wakes the control loop before its next tick when the cluster changed: the assignment
    was written (its new partitions start now), a member or the leader left (its entry
    deleted), or a member's or the leader's entry is due to lapse (its last write plus the
    member TTL: an entry that ages out makes no write). And it tells a member gone silent
    (`silent`) while nats-server, which removes a lapsed entry a little late, still holds
    it. Why: a crashed runner's partitions used to wait for the server's removal (0.25 s
    after the TTL), then for the leader's next tick, then for their new owner's."""

    def __init__(self, member_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = member_ttl, clock
        self.woken = asyncio.Event()
        # (bucket, key) -> the last write heard of a member or the leader key: when, what
        self.heard: dict[tuple[str, str], tuple[float, bytes]] = {}
        self.began = clock()  # when the control loop's tick in hand began
        self._stops: list[Callable[[], Awaitable[None]]] = []

    async def start(self, nats: Nats) -> None:
        for bucket in (MEMBERS_BUCKET, LEADER_BUCKET):
            self._stops.append(await nats.watch_writes(bucket, functools.partial(self.written, bucket)))
        self._stops.append(await nats.watch_writes(ASSIGN_BUCKET, lambda _key, _value: self.woken.set()))

    async def stop(self) -> None:
        for stop in self._stops:
            await stop()
        self._stops.clear()

    def written(self, bucket: str, key: str, value: bytes | None) -> None:
        """A write heard: `value`, or None for a delete."""
        if value is None:
            self.heard.pop((bucket, key), None)
            self.woken.set()
        else:
            self.heard[(bucket, key)] = (self.clock(), value)

    def _aged(self, write: tuple[float, bytes]) -> bool:
        return self.clock() - write[0] >= self.ttl

    def lapsed(self, runner_id: str, entry: bytes | None) -> bool:
        """Is the member's entry, as the server holds it now (`entry`; None: removed), its
        last beat heard, and that beat older than the TTL? Heartbeats differ from beat to
        beat (their time), so a beat this watch missed is never taken for silence."""
        if entry is None:
            return True
        beat = self.heard.get((MEMBERS_BUCKET, runner_id))
        return beat is not None and beat[1] == entry and self._aged(beat)

    def overdue(self) -> bool:
        """Is any member's last beat heard older than the TTL (a candidate for `silent`)?"""
        return any(b == MEMBERS_BUCKET and self._aged(w) for (b, _), w in self.heard.items())

    async def silent(self, nats: Nats, runner_id: str) -> bool:
        """Has the member gone silent (see `lapsed`)? Read only once its TTL has passed."""
        beat = self.heard.get((MEMBERS_BUCKET, runner_id))
        if beat is None or not self._aged(beat):
            return False
        return self.lapsed(runner_id, await nats.kv_get(MEMBERS_BUCKET, runner_id))

    def begin(self) -> None:
        """A tick begins: what is written from now on wakes the next one."""
        self.woken.clear()
        self.began = self.clock()

    def timeout(self, tick: float) -> float:
        """How long the loop may sleep after the tick in hand: a tick, or until the next
        expected lapse, or, once one is past, LAPSE_RECHECK (the server may not have removed
        the entry yet), for lapses whose window had not passed when the tick began."""
        for k in [k for k, (at, _) in self.heard.items() if at + FORGET_AFTER * self.ttl <= self.began]:
            del self.heard[k]
        now = self.clock()
        lapses = [at + self.ttl for at, _ in self.heard.values()
                  if at + self.ttl + LAPSE_WINDOW > self.began]
        due = min((at - now if at > now else LAPSE_RECHECK for at in lapses), default=math.inf)
        return max(0.0, min(tick, due))

    async def pause(self, stop: asyncio.Event, tick: float) -> None:
        """Sleep until the next tick, a wake-up or `stop`, whichever comes first."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.woken.wait())]
        try:
            await asyncio.wait(waits, timeout=self.timeout(tick), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


def new_runner_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:24]
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


async def ensure_buckets(nats: Nats, cfg: ClusterConfig) -> None:
    await nats.kv_bucket(MEMBERS_BUCKET, ttl=cfg.member_ttl)
    await nats.kv_bucket(LEADER_BUCKET, ttl=cfg.member_ttl)
    await nats.kv_bucket(ASSIGN_BUCKET)
    await nats.kv_bucket(LEASES_BUCKET)
    await nats.kv_bucket(LAYOUTS_BUCKET)
    await nats.kv_bucket(SCHEDULES_BUCKET)
    await CallClient(nats).setup()  # results and idempotency buckets, with their TTL
    # Callers put large arguments there (they may not create it); kept as long as results.
    await nats.obj_bucket(BLOBS_BUCKET, ttl=RESULT_TTL)


async def live_members(nats: Nats, watch: ClusterWatch | None = None) -> list[str]:
    """The members with an entry, less those `watch` heard go silent."""
    members = await nats.kv_keys(MEMBERS_BUCKET)
    if watch is None:
        return members
    return [m for m in members if not await watch.silent(nats, m)]


async def is_live(nats: Nats, runner_id: str, watch: ClusterWatch | None = None) -> bool:
    """One direct read: the holder's own heartbeat entry (listing keys is a watch that can
    come back short, and a lease must never be taken from a live runner by mistake); with a
    `watch`, an entry holding a beat older than the TTL is no life either."""
    entry = await nats.kv_get(MEMBERS_BUCKET, runner_id)
    return entry is not None and not (watch is not None and watch.lapsed(runner_id, entry))


class Leadership:
    """Campaign every tick: create the leader key, or renew it by compare-and-swap."""

    def __init__(self, nats: Nats, runner_id: str, watch: ClusterWatch | None = None) -> None:
        self.nats, self.runner_id, self.watch = nats, runner_id, watch
        self.revision: int | None = None

    @property
    def leading(self) -> bool:
        return self.revision is not None

    async def campaign(self) -> bool:
        me = Holder(self.runner_id).to_wire()
        if self.revision is not None:
            self.revision = await self.nats.kv_update(LEADER_BUCKET, LEADER_KEY, me, self.revision)
            if self.revision is None:
                log.warning("%s lost the leadership", self.runner_id)
        else:
            self.revision = await self.nats.kv_create(LEADER_BUCKET, LEADER_KEY, me)
            if self.revision is None:
                self.revision = await self._take_from_silent(me)
            if self.revision is not None:
                log.info("%s is the leader", self.runner_id)
        return self.leading

    async def _take_from_silent(self, me: bytes) -> int | None:
        """The leader key, taken over (compare-and-swap) from a leader the watch heard go
        silent, without waiting for the key's own lapse (a TTL after its last renewal, and
        the server's late removal). A leader that renews but no longer beats is gone too:
        its membership is its life, as for its partitions."""
        if self.watch is None or not self.watch.overdue():
            return None  # every member heard beating lately: no read (this runs every tick)
        entry = await self.nats.kv_entry(LEADER_BUCKET, LEADER_KEY)
        if entry is None:
            return None  # (removed meanwhile: the next campaign creates it)
        holder = Holder.from_wire(entry.value).runner_id
        if holder == self.runner_id or not await self.watch.silent(self.nats, holder):
            return None
        log.warning("%s takes the leadership from %s, silent for the member TTL", self.runner_id, holder)
        return await self.nats.kv_update(LEADER_BUCKET, LEADER_KEY, me, entry.revision)

    async def resign(self) -> None:
        if self.revision is not None:
            await self.nats.kv_delete(LEADER_BUCKET, LEADER_KEY, last=self.revision)
            self.revision = None


def assignment(members: list[str], manifest: Manifest, current: Assignment | None = None,
               retired: Retirement | None = None) -> Assignment:
    """(stage, partition) -> owner: each layout of each stage spread evenly over `members`
    (ownership.spread), partitions staying with their `current` owners where that keeps it
    even; a drained layout until `retired` (wallaroo.core.repartition). Pure: same inputs,
    same answer."""
    now = {_item(manifest.slug, k): v for k, v in (current.owners if current else {}).items()}
    record = retired or Retirement()
    owners: dict[Part, str] = {}
    for st in manifest.stages:
        below = repartition.retired(record, st)
        # Each layout on its own: a drained layout's idle partitions must not count against
        # the spread of the new one's.
        for layout in (st.prev_parts, st.parts):
            items = {_item(manifest.slug, (st.index, p)): (st.index, p) for p in layout if p >= below}
            for item, owner in spread(members, list(items), now).items():
                owners[items[item]] = owner
    return Assignment(owners)


def _item(slug: str, part: Part) -> str:
    return f"{slug}/{part[0]}/{part[1]}"


async def publish_assignment(nats: Nats, manifest: Manifest, members: list[str], *,
                             keep_current: bool = False) -> bool:
    """Write the app's assignment if it changed; True if it did. With `keep_current` (NATS
    failed the leader lately, so a missing heartbeat says little about its runner), the
    owners of the current assignment stay members: partitions may move to joiners only."""
    current = await read_assignment(nats, manifest.slug)
    if keep_current:
        members = sorted(set(members) | set(current.owners.values()))
    if not members:
        return False  # not even the leader's own beat is in yet: nobody to assign to
    new = assignment(members, manifest, current, await observe.retirement_of(nats, manifest))
    if current == new:
        return False
    await nats.kv_put(ASSIGN_BUCKET, manifest.slug, new.to_wire())
    moved = sum(1 for k, v in new.owners.items() if current.owners.get(k) != v)
    log.info("assigned %s over %d runner(s): %d partition(s) moved", manifest.slug, len(members), moved)
    return True


async def read_assignment(nats: Nats, slug: str) -> Assignment:
    raw = await nats.kv_get(ASSIGN_BUCKET, slug)
    return Assignment.from_wire(raw) if raw else Assignment({})


class Lease:
    """The right to run one partition, held in KV by runner id."""

    def __init__(self, nats: Nats, key: str, runner_id: str, cfg: ClusterConfig,
                 watch: ClusterWatch | None = None) -> None:
        self.nats, self.key, self.runner_id, self.cfg, self.watch = nats, key, runner_id, cfg, watch
        self.revision: int | None = None

    async def acquire(self, wanted: Callable[[], bool]) -> bool:
        """Wait until the lease is ours: free, already ours, its holder is gone, or it was
        not released within `lease_patience`. False if we stop wanting it meanwhile."""
        started = time.monotonic()
        while wanted():
            if await self._try(patience_over=time.monotonic() - started > self.cfg.lease_patience):
                return True
            await asyncio.sleep(self.cfg.tick / 2)
        return False

    async def _try(self, patience_over: bool) -> bool:
        me = Holder(self.runner_id).to_wire()
        self.revision = await self.nats.kv_create(LEASES_BUCKET, self.key, me)
        if self.revision is not None:
            return True
        entry = await self.nats.kv_entry(LEASES_BUCKET, self.key)
        if entry is None:
            return False  # released between our two reads: try again next round
        holder = Holder.from_wire(entry.value).runner_id
        if holder != self.runner_id and await is_live(self.nats, holder, self.watch) and not patience_over:
            return False
        if holder != self.runner_id:
            log.warning("%s takes lease %s from %s", self.runner_id, self.key, holder)
        self.revision = await self.nats.kv_update(LEASES_BUCKET, self.key, me, entry.revision)
        return self.revision is not None

    async def take_if_free(self) -> bool:
        """One try, never waiting: ours if free, already ours, or its holder is gone."""
        return await self._try(patience_over=False)

    async def held(self) -> bool:
        entry = await self.nats.kv_entry(LEASES_BUCKET, self.key)
        return entry is not None and Holder.from_wire(entry.value).runner_id == self.runner_id

    async def release(self) -> None:
        if self.revision is not None:
            await self.nats.kv_delete(LEASES_BUCKET, self.key, last=self.revision)
            self.revision = None

