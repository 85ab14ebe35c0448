"""Snapshots of a partition to the state store, and trimming of its JetStream changelog.

Every `every` commits or `seconds` seconds the owner writes a snapshot plus the changelog
segment it covers (segment first), then purges the changelog below its newest record: that
record stays, as the fence's anchor and for re-publishing its outputs after a crash. A failing
store (S3 down) only delays the next snapshot: nothing is trimmed until one is written.
Snapshots are incremental: a delta of the keys changed since the last snapshot, and a full one
(compaction, encoded in a thread) when there is none yet, when the deltas since the last full
one add up to a quarter of its size, or after `max_deltas` of them. So a snapshot's cost
follows the change rate, not the state's size, and a restore reads at most 1.25 times the
state (and decodes the full snapshot's keys only as they are used).
Restore = newest valid snapshot rolled forward through its deltas + the changelog after it; if
the changelog is gone, the snapshots and segments in the store alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

from wallaroo.core.changelog import PartitionState
from wallaroo.core.errors import WallarooError
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.statestore import StateStore

log = logging.getLogger("wallaroo.checkpoint")
COMMIT_EPOCH = 1_000_000
# A full snapshot once the deltas since the last one reach 1/COMPACT_AT of its size: a
# restore decodes its deltas whole (the full snapshot only as keys are used), so they are
# kept small; compaction then costs at most COMPACT_AT times what the deltas did.
COMPACT_AT = 4


class RestoreGapError(WallarooError):
    """The stored snapshots, segments and changelog do not join up: state would be missing."""


@dataclass(frozen=True)
class CheckpointConfig:
    store: StateStore | None = None
    every: int = 500  # commits
    seconds: float = 30.0
    # Why a byte bound too: commit records carry their outputs, so 500 of them held for the
    # next segment would grow the runner with the data volume instead of its state. The bound
    # trades memory for latency (`wallaroo runner --snapshot-bytes`): each partition holds up
    # to this. One-runner word count, alternating A/B: 2 MiB brought peak RSS 1M -> 10M words
    # from 1.24-1.33x to 1.06-1.13x (nats-server 1.21-1.24x -> 1.11-1.17x), but segments
    # twice as often raised p99 at 20k records/s from 42-59 ms to 60-81 ms (4 runs each).
    max_pending_bytes: int = 4 << 20
    retry_after: float = 5.0  # after a failed snapshot (e.g. S3 down)
    max_deltas: int = 64  # deltas after a full snapshot before the next full one, at most
    state_key: bytes | None = None  # MACs snapshots and segments (runners share it)


@dataclass
class Checkpointer:
    """One partition's snapshot schedule; the worker calls it after every commit."""

    nats: Nats
    cfg: CheckpointConfig
    slug: str
    stage: int
    part: int
    log_stream: str
    log_subject: str
    stateful: bool
    pending: list[bytes] = field(default_factory=list)  # commit records since the snapshot
    pending_nos: list[int] = field(default_factory=list)  # their commit numbers
    pending_bytes: int = 0
    last_at: float = field(default_factory=time.monotonic)
    failures: int = 0
    writing: asyncio.Task[None] | None = None
    threshold: int = 0
    byte_threshold: int = 0
    restored_from: int | None = None  # commit number of the snapshot the last restore used
    # The next delta's content and base: the newest value of each key changed since the
    # newest stored snapshot, and that snapshot's commit (None: the next one must be full).
    dirty: dict[str, bytes] = field(default_factory=dict)
    base: int | None = None
    chain: tuple[int, int, int] = (0, 0, 0)  # since the last full: its bytes, delta bytes, deltas

    def __post_init__(self) -> None:
        self._draw_threshold()

    def due(self) -> bool:
        return (len(self.pending) >= self.threshold or self.pending_bytes >= self.byte_threshold
                or (bool(self.pending) and time.monotonic() - self.last_at >= self.cfg.seconds))

    def _hold(self, records: list[bytes], nos: list[int]) -> None:
        """`records` (commits `nos`) are what the next segment must cover (all of it: earlier
        ones first)."""
        self.pending, self.pending_nos = records, nos
        self.pending_bytes = sum(map(len, records))

    def _keep(self, record: bytes, no: int) -> None:
        """One more commit record for the next segment (its size kept, not summed anew)."""
        self.pending.append(record)
        self.pending_nos.append(no)
        self.pending_bytes += len(record)

    def _draw_threshold(self) -> None:
        # Why jitter: partitions under even load would all snapshot in the same instant,
        # and their encoding, which holds the event loop, would add up to one long stall.
        self.threshold = max(1, round(self.cfg.every * random.uniform(0.5, 1.5)))
        # The byte bound too (below it: it bounds memory): partitions fed evenly with big
        # commits reached it together, and their full snapshots, whose encoding holds the GIL
        # in its thread, stalled the loop together (seen: 8 at once at 100k new keys/s).
        self.byte_threshold = max(1, round(self.cfg.max_pending_bytes * random.uniform(0.5, 1.0)))

    async def after_commit(self, encoded: bytes, state: PartitionState, log_seq: int) -> None:
        if self.stateful and self.cfg.store is None:
            return  # nothing to snapshot to: the changelog is kept whole
        self._keep(encoded, state.commit_no)  # the worker applied this very record
        if state.last is not None:
            self.dirty.update(state.last.states)
        if self.due():
            await self.checkpoint(state, log_seq)

    async def checkpoint(self, state: PartitionState, log_seq: int) -> None:
        """Snapshot (when a store is configured), then trim the changelog. The store write runs
        in the background, so a slow or unavailable S3 never stalls the partition."""
        if self.stateful and self.cfg.store is None:
            self._hold([], [])  # no store: the changelog is kept whole
            self.last_at = time.monotonic()
            return
        if self.cfg.store is None:
            await self._trim(log_seq)
            self._hold([], [])
            self.last_at = time.monotonic()
            return
        if self.writing is not None and not self.writing.done():
            return
        # Stateless stages too: their commit numbers must survive a lost changelog.
        changed, self.dirty = self.dirty, {}
        s = self._snapshot(state, log_seq, changed)
        records, nos = self.pending, self.pending_nos
        self._hold([], [])
        self.last_at = time.monotonic()
        self._draw_threshold()
        self.writing = asyncio.create_task(self._write(s, records, nos, changed))

    def _snapshot(self, state: PartitionState, log_seq: int, changed: dict[str, bytes]
                  ) -> snap.Snapshot:
        full_bytes, delta_bytes, deltas = self.chain
        if (self.base is None or delta_bytes * COMPACT_AT >= full_bytes
                or deltas >= self.cfg.max_deltas):
            # The table's copy is one C-level pass; the encoding runs in a thread.
            return snap.Snapshot.of(self.slug, self.stage, self.part, state, log_seq, time.time())
        return snap.Snapshot.delta(self.slug, self.stage, self.part, state, log_seq, time.time(),
                                   self.base, changed)

    async def _write(self, s: snap.Snapshot, records: list[bytes], nos: list[int],
                     changed: dict[str, bytes]) -> None:
        assert self.cfg.store is not None
        try:
            started = time.monotonic()
            size = await snap.write(self.cfg.store, s, records, self.cfg.state_key, nos)
            self._written(s, size, time.monotonic() - started)
            await snap.prune(self.cfg.store, self.slug, self.stage, self.part)
            await self._trim(s.log_seq)
        except Exception as err:  # any failure: keep the changelog, say so, try again later
            self.failures += 1
            # The next segment must cover them again.
            self._hold(records + self.pending, nos + self.pending_nos)
            self.dirty = changed | self.dirty  # and the next delta these keys (newer values win)
            self.last_at = time.monotonic() - self.cfg.seconds + self.cfg.retry_after
            log.warning("%s: snapshot failed (%d so far), changelog kept: %s",
                        self.log_subject, self.failures, err)

    def _written(self, s: snap.Snapshot, size: int, took: float) -> None:
        self.base = s.commit_no
        full_bytes, delta_bytes, deltas = self.chain
        self.chain = (full_bytes, delta_bytes + size, deltas + 1) if s.is_delta else (size, 0, 0)
        # Full snapshots are rare (they follow the deltas' volume): each is worth a line.
        log.log(logging.DEBUG if s.is_delta else logging.INFO,
                "%s: %s snapshot of commit %d: %d keys, %d bytes, written in %.3fs",
                self.log_subject, "delta" if s.is_delta else "full", s.commit_no, len(s.table),
                size, took)

    async def _trim(self, log_seq: int) -> None:
        await self.nats.purge_subject_below(self.log_stream, self.log_subject, log_seq)

    async def close(self) -> None:
        """Let a snapshot in flight finish (it is consistent either way)."""
        if self.writing is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.writing  # _write logs its own failures and never raises

    async def restore(self, last_seq: int) -> PartitionState:
        """The partition's state: newest valid snapshot, the stored segments after it (they
        bridge a newer snapshot that turned out corrupt), then the changelog up to `last_seq`.
        Commits must follow each other without a gap, or the restore fails (and is retried)
        rather than go on with state missing. `pending` is left holding the records the next
        segment must cover."""
        chain = await self._latest()
        base = None if chain is None else chain.snapshot
        state = base.to_state() if base is not None else PartitionState()
        self.restored_from = self.base = None if base is None else base.commit_no
        if chain is not None:
            self.chain = (chain.full_bytes, chain.delta_bytes, chain.deltas)
        self._hold([], [])
        self.dirty = {}
        if base is not None:
            for data in await self._segments_after(state.commit_no):
                self._apply(state, CommitRecord.from_wire(data), data)
        if last_seq == 0 and base is not None:
            return self._from_store_alone(state)
        # A snapshot past the changelog's end: the changelog was made anew, read all of it.
        start = base.log_seq if base is not None and base.log_seq <= last_seq else 1
        async for m in self.nats.read_subject(self.log_stream, self.log_subject, last_seq, start,
                                              complete=True):
            rec = CommitRecord.from_wire(m.data)
            if rec.commit_no <= state.commit_no:
                state.last = rec  # already in the snapshot; kept to re-publish its outputs
            else:
                self._apply(state, rec, m.data)
        return state

    def _apply(self, state: PartitionState, rec: CommitRecord, data: bytes) -> None:
        if rec.commit_no not in (state.commit_no + 1, state.commit_no + COMMIT_EPOCH + 1):
            msg = (f"{self.log_subject}: commit {rec.commit_no} follows {state.commit_no}: "
                   "commits are missing")
            raise RestoreGapError(msg)
        state.apply(rec)
        self._keep(data, rec.commit_no)
        self.dirty.update(rec.states)

    async def _segments_after(self, commit_no: int) -> list[bytes]:
        assert self.cfg.store is not None
        try:
            return await snap.segments_after(self.cfg.store, self.slug, self.stage, self.part,
                                             commit_no, self.cfg.state_key)
        except snap.CorruptSnapshotError as err:
            log.warning("%s: stored segments unusable (%s); using the changelog", self.log_subject,
                        err)
            return []

    async def _latest(self) -> snap.Chain | None:
        if self.cfg.store is None:
            return None
        return await snap.latest_chain(self.cfg.store, self.slug, self.stage, self.part,
                                       self.cfg.state_key)

    def _from_store_alone(self, state: PartitionState) -> PartitionState:
        log.warning("%s: changelog is empty; restoring from the state store alone", self.log_subject)
        # Commits after the newest snapshot went with the changelog. Jump the commit number,
        # so new outputs are never mistaken downstream for those lost ones (and dropped).
        state.commit_no += COMMIT_EPOCH
        return state
