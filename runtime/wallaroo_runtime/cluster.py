"""Membership, leadership, partition assignment and partition leases, all in NATS KV.

- Members heartbeat into a bucket whose entries lapse `member_ttl` after their last write:
  a runner that stops beating is gone within that bound.
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
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
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


async def live_members(nats: Nats) -> list[str]:
    return await nats.kv_keys(MEMBERS_BUCKET)


async def is_live(nats: Nats, runner_id: str) -> bool:
    """One direct read: the holder's own heartbeat entry (listing keys is a watch that can
    come back short, and a lease must never be taken from a live runner by mistake)."""
    return await nats.kv_get(MEMBERS_BUCKET, runner_id) is not None


class Leadership:
    """Campaign every tick: create the leader key, or renew it by compare-and-swap."""

    def __init__(self, nats: Nats, runner_id: str) -> None:
        self.nats, self.runner_id = nats, runner_id
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
            if self.revision is not None:
                log.info("%s is the leader", self.runner_id)
        return self.leading

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

    def __init__(self, nats: Nats, key: str, runner_id: str, cfg: ClusterConfig) -> None:
        self.nats, self.key, self.runner_id, self.cfg = nats, key, runner_id, cfg
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
        if holder != self.runner_id and await is_live(self.nats, holder) and not patience_over:
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

