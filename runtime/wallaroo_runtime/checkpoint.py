"""Snapshots of a partition to the state store, and trimming of its JetStream changelog.

Every `every` commits, `seconds` seconds or `max_pending_bytes` of commit records, the owner
writes a snapshot plus the changelog segment it covers (segment first); between snapshots,
every `segment_bytes` of records, a segment alone. After each it purges the changelog below
its newest record: that record stays, as the fence's anchor and for re-publishing its outputs
after a crash. The records waiting for their segment are held in a file (wallaroo_runtime.
spool), not in memory. A failing store (S3 down) only delays snapshots and segments: nothing
is trimmed until what it covers is written. Once trimmed, the segments after the newest
snapshot are the only copy of those commits: a store that loses one stops the partition's
restore (RestoreGapError) rather than let it go on without them.
Snapshots are incremental: a delta of the keys changed since the last snapshot, and a full one
(compaction) when there is none yet, when the deltas since the last full one add up to a
quarter of its size, or after `max_deltas` of them. So a snapshot's cost follows the change
rate, not the state's size, and a restore reads about 1.25 times the state at most (and
decodes the full snapshot's keys only as they are used). Compaction of a state whose last full
snapshot is `offload_bytes` or more is done in the background by the runner's helper process
(wallaroo_runtime.compactor), from the stored snapshots, while this one goes on writing
deltas; a smaller one is encoded here, in a thread (a helper's round trip would cost more).
Restore = newest valid snapshot rolled forward through its deltas + the segments stored after
it + the changelog after them; if the changelog is gone, the store alone."""

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
from wallaroo_runtime.compactor import Compacted, Compactor, CompactorError
from wallaroo_runtime.spool import Spool
from wallaroo_runtime.statestore import StateStore, StateStoreError

log = logging.getLogger("wallaroo.checkpoint")
# A full snapshot once the deltas since the last one reach 1/COMPACT_AT of its size: a
# restore decodes its deltas whole (the full snapshot only as keys are used), so they are
# kept small; compaction then costs at most COMPACT_AT times what the deltas did.
COMPACT_AT = 4


class RestoreGapError(WallarooError):
    """The stored snapshots, segments and changelog do not join up: state would be missing."""


class SpoolLostError(WallarooError):
    """The commit records held for a partition's next segment could not be read back."""

    def __init__(self, subject: str, err: OSError) -> None:
        self.subject, self.err = subject, err
        super().__init__(f"{subject}: the commits held for the next segment could not be read "
                         f"back ({err}); the partition restarts from its changelog")


@dataclass(frozen=True)
class CheckpointConfig:
    store: StateStore | None = None
    every: int = 500  # commits
    seconds: float = 30.0
    # Why a byte bound too: commit records carry their outputs, so 500 of them would be a
    # replay at a restore that grows with the data volume instead of the state. A smaller
    # bound costs latency (`wallaroo runner --snapshot-bytes`): one-runner word count, 2 MiB
    # instead of 4 raised p99 at 20k records/s from 42-59 ms to 60-81 ms (4 runs each).
    max_pending_bytes: int = 4 << 20
    # Between snapshots, the commit records are stored as segments of about this size, and the
    # changelog trimmed after each: nats-server keeps this much of a partition's changelog,
    # not up to max_pending_bytes. A segment costs a store write and a purge, no snapshot.
    segment_bytes: int = 1 << 20
    retry_after: float = 5.0  # after a failed snapshot or segment (e.g. S3 down)
    max_deltas: int = 64  # deltas after a full snapshot before the next full one, at most
    state_key: bytes | None = None  # MACs snapshots and segments (runners share it)
    # Who compacts big states in the background (the runner's helper process; None: every
    # full snapshot is encoded here), and from what size of the last full snapshot. Why 256
    # KiB: about 13k keys of word count, 5-10 ms of encoding, where a thread's hold on the
    # GIL starts to show in the commits' latency; a smaller one costs less than the hop.
    compactor: Compactor | None = None
    offload_bytes: int = 256 << 10


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
    # The commit records since the newest snapshot, for the next segment, in files: the
    # spools of writes that failed (oldest first; only while the store fails, and kept as
    # files: an outage of hours must not hold its records in memory), then the spool new
    # commits go to (only with a store: no segment without).
    back: list[Spool] = field(default_factory=list)
    spool: Spool = field(default_factory=Spool)
    spool_lost: OSError | None = None  # reading a spool back failed: the partition must restart
    last_at: float = field(default_factory=time.monotonic)
    failures: int = 0
    writing: asyncio.Task[None] | None = None
    threshold: int = 0
    byte_threshold: int = 0
    segment_threshold: int = 0
    since: tuple[int, int] = (0, 0)  # commits and their bytes since the newest snapshot
    retry_at: float = 0.0  # no write before this (monotonic): after a failed one
    restored_from: int | None = None  # commit number of the snapshot the last restore used
    # The next delta's content and base: the newest value of each key changed since the
    # newest stored snapshot, and that snapshot's commit (None: the next one must be full).
    dirty: dict[str, bytes] = field(default_factory=dict)
    base: int | None = None
    # The newest full snapshot's bytes and the deltas after it, (commit, bytes) each: what
    # makes a compaction due, and what one in the background leaves (those after its commit).
    full_bytes: int = 0
    recent: list[tuple[int, int]] = field(default_factory=list)
    compacting: asyncio.Task[None] | None = None
    offload_failed: bool = False  # the last background compaction failed: the next full is ours

    def __post_init__(self) -> None:
        self._draw_threshold()

    @property
    def held(self) -> int:
        """Commits the next segment must cover."""
        return sum(map(len, self.back)) + len(self.spool)

    @property
    def held_bytes(self) -> int:
        return sum(s.bytes for s in self.back) + self.spool.bytes

    def due(self) -> bool:
        """Is a snapshot due? (Not before `retry_at`: a store that failed is not asked at
        every commit.)"""
        commits, size = self.since
        now = time.monotonic()
        return now >= self.retry_at and (commits >= self.threshold or size >= self.byte_threshold
                                         or (commits > 0 and now - self.last_at >= self.cfg.seconds))

    def _segment_due(self) -> bool:
        return (self.cfg.store is not None and self.held_bytes >= self.segment_threshold
                and time.monotonic() >= self.retry_at)

    def forget_held(self) -> None:
        """Start the next segment afresh (its records' file goes)."""
        _discard(self._take_held())
        self.since = (0, 0)

    def _keep(self, record: bytes, no: int, stored: bool = False) -> None:
        """One more commit record for the next snapshot's count, and for the next segment
        (held only where there is a store to write it to, and not `stored` in one already)."""
        if self.cfg.store is not None and not stored:
            self.spool.add(record, no)
        self.since = (self.since[0] + 1, self.since[1] + len(record))

    def _draw_threshold(self) -> None:
        # Why jitter: partitions under even load would all snapshot in the same instant,
        # and their encoding, which holds the event loop, would add up to one long stall.
        self.threshold = max(1, round(self.cfg.every * random.uniform(0.5, 1.5)))
        # The byte bounds too: partitions fed evenly with big
        # commits reached it together, and their full snapshots, whose encoding holds the GIL
        # in its thread, stalled the loop together (seen: 8 at once at 100k new keys/s).
        self.byte_threshold = max(1, round(self.cfg.max_pending_bytes * random.uniform(0.5, 1.0)))
        self.segment_threshold = max(1, round(self.cfg.segment_bytes * random.uniform(0.5, 1.0)))

    async def after_commit(self, encoded: bytes, state: PartitionState, log_seq: int) -> None:
        if self.spool_lost is not None:
            raise SpoolLostError(self.log_subject, self.spool_lost)
        if self.stateful and self.cfg.store is None:
            return  # nothing to snapshot to: the changelog is kept whole
        self._keep(encoded, state.commit_no)  # the worker applied this very record
        if state.last is not None:
            self.dirty.update(state.last.states)
        if self.due():
            await self.checkpoint(state, log_seq)
        elif self._segment_due() and (self.writing is None or self.writing.done()):
            self.writing = asyncio.create_task(self._store_segment(self._take_held(), log_seq))

    async def checkpoint(self, state: PartitionState, log_seq: int) -> None:
        """Snapshot (when a store is configured), then trim the changelog. The store write runs
        in the background, so a slow or unavailable S3 never stalls the partition."""
        if self.spool_lost is not None:  # (the idle path calls this too)
            raise SpoolLostError(self.log_subject, self.spool_lost)
        if self.stateful and self.cfg.store is None:
            self.forget_held()  # no store: the changelog is kept whole
            self.last_at = time.monotonic()
            return
        if self.cfg.store is None:
            await self._trim(log_seq)
            self.forget_held()
            self.last_at = time.monotonic()
            return
        if self.writing is not None and not self.writing.done():
            return
        # Stateless stages too: their commit numbers must survive a lost changelog.
        changed, self.dirty = self.dirty, {}
        s = self._snapshot(state, log_seq, changed)
        held = self._take_held()
        since, self.since = self.since, (0, 0)
        self.last_at = time.monotonic()
        self._draw_threshold()
        self.writing = asyncio.create_task(self._write(s, held, changed, since))

    @property
    def stores(self) -> bool:
        return self.cfg.store is not None

    async def snapshot_now(self, state: PartitionState, log_seq: int) -> bool:
        """A snapshot of `state` written now, waited for (a write in flight first): did the
        store take it? A failed one leaves its records held for the next, as any does."""
        if self.cfg.store is None:
            return False
        # Shielded: a worker cancelled meanwhile must not cut a write short (its held records
        # would be neither stored nor given back). A write never raises: it logs its failure.
        if self.writing is not None:
            await asyncio.shield(self.writing)
        if self.base == state.commit_no:  # stored already: another snapshot would overwrite it
            return True
        await self.checkpoint(state, log_seq)
        if self.writing is not None:
            await asyncio.shield(self.writing)
        return self.base == state.commit_no

    def _take_held(self) -> list[Spool]:
        """The spools of the records held for the next segment, handed to a writer; the next
        ones go to a new spool."""
        held, self.back, self.spool = [*self.back, self.spool], [], Spool()
        return held

    async def _held_records(self, held: list[Spool]) -> tuple[list[bytes], list[int]] | None:
        """The records handed over, read back in a thread (as the encoding): a few MB from
        the page cache. None when a spool's file failed (a disk error): its records are
        then only in the changelog, which nothing trimmed, so the partition must restart."""
        assert self.cfg.store is not None  # only what is stored is held
        try:
            records = await asyncio.to_thread(_read_all, held)
        except OSError as err:
            _discard(held)
            self.spool_lost = err
            log.error("%s: commits held for the next segment are lost (%s): restarting the "
                      "partition from its changelog", self.log_subject, err)
            return None
        return records, [no for spool in held for no in spool.nos]

    async def _store_segment(self, held: list[Spool], log_seq: int) -> None:
        """The records since the last segment, stored without a snapshot, then the changelog
        trimmed below `log_seq` (the newest record stays)."""
        read = await self._held_records(held)
        if read is None:
            return
        records, nos = read
        try:
            assert self.cfg.store is not None
            await snap.write_segment(self.cfg.store, self.slug, self.stage, self.part, records,
                                     nos, self.cfg.state_key)
            await self._trim(log_seq)
        except Exception as err:  # any failure: keep the changelog, try again later
            await self._give_back(held, "segment", err)
            return
        _discard(held)

    async def _give_back(self, held: list[Spool], what: str, err: Exception) -> None:
        """A write failed: the next segment must cover its records again (ahead of those
        held since), read again from their files; the changelog was not trimmed. Several
        files are joined into one (in a thread), so a long outage holds one per partition."""
        self.failures += 1
        self.back = back = held + self.back
        self.retry_at = time.monotonic() + self.cfg.retry_after
        log.warning("%s: %s failed (%d so far), changelog kept: %s",
                    self.log_subject, what, self.failures, err)
        if len(back) > 1:
            try:
                joined = await asyncio.to_thread(Spool.joined, back)
            except OSError as copy_err:  # (the files stay as they were, all of them)
                log.warning("%s: held commits not joined into one file: %s", self.log_subject,
                            copy_err)
                return
            if self.back is back:  # (else a restore let them go meanwhile)
                self.back = [joined]
                _discard(back)
            else:
                joined.discard()

    def _snapshot(self, state: PartitionState, log_seq: int, changed: dict[str, bytes]
                  ) -> snap.Snapshot:
        if self.base is None or (self._compaction_due() and not self._offloads()):
            # The table's copy is one C-level pass; the encoding runs in a thread.
            return snap.Snapshot.of(self.slug, self.stage, self.part, state, log_seq, time.time())
        return snap.Snapshot.delta(self.slug, self.stage, self.part, state, log_seq, time.time(),
                                   self.base, changed)

    def _compaction_due(self) -> bool:
        delta_bytes = sum(size for _, size in self.recent)
        return delta_bytes * COMPACT_AT >= self.full_bytes or len(self.recent) >= self.cfg.max_deltas

    def _offloads(self) -> bool:
        """Is compaction the helper's? (Not after it failed: then one full snapshot here.)"""
        return (self.cfg.compactor is not None and not self.offload_failed
                and self.full_bytes >= self.cfg.offload_bytes)

    def _compact_if_due(self, newest: snap.Snapshot) -> None:
        """After a delta: have the helper fold the deltas into a full snapshot, once due
        (one compaction at a time per partition)."""
        if (newest.is_delta and self._compaction_due() and self._offloads()
                and (self.compacting is None or self.compacting.done())):
            self.compacting = asyncio.create_task(self._compact(newest.commit_no))

    async def _compact(self, upto: int) -> None:
        assert self.cfg.compactor is not None and self.cfg.store is not None
        try:
            done = await self.cfg.compactor.compact(self.slug, self.stage, self.part)
            if done is None or done.commit_no < upto:  # a delta it read is corrupt or gone
                reached = "nothing" if done is None else f"commit {done.commit_no}"
                msg = f"compacted {reached}, not commit {upto}"
                raise CompactorError(msg)
            self._compacted(done)
            await snap.prune(self.cfg.store, self.slug, self.stage, self.part)
        except (CompactorError, StateStoreError, OSError) as err:
            self.offload_failed = True
            log.warning("%s: compaction in the background failed (%s); the next full snapshot "
                        "is written here", self.log_subject, err)

    def _compacted(self, done: Compacted) -> None:
        """The chain is now the helper's full snapshot and the deltas written after it."""
        self.recent = [(commit, size) for commit, size in self.recent if commit > done.commit_no]
        self.full_bytes = done.size
        log.info("%s: full snapshot of commit %d written in the background: %d keys, %d bytes, "
                 "in %.3fs", self.log_subject, done.commit_no, done.keys, done.size, done.took)

    async def _write(self, s: snap.Snapshot, held: list[Spool], changed: dict[str, bytes],
                     since: tuple[int, int]) -> None:
        read = await self._held_records(held)
        if read is None:  # the partition restarts; nothing of this snapshot is stored
            self.dirty = changed | self.dirty
            self.since = (since[0] + self.since[0], since[1] + self.since[1])
            return
        records, nos = read
        try:
            assert self.cfg.store is not None
            started = time.monotonic()
            size = await snap.write(self.cfg.store, s, records, self.cfg.state_key, nos)
            self._written(s, size, time.monotonic() - started)
            await snap.prune(self.cfg.store, self.slug, self.stage, self.part)
            await self._trim(s.log_seq)
            self._compact_if_due(s)
        except Exception as err:  # any failure: keep the changelog, say so, try again later
            self.since = (since[0] + self.since[0], since[1] + self.since[1])  # still due
            self.dirty = changed | self.dirty  # and the next delta these keys (newer values win)
            self.last_at = time.monotonic() - self.cfg.seconds  # due again by time at retry_at
            await self._give_back(held, "snapshot", err)
            return
        _discard(held)

    def _written(self, s: snap.Snapshot, size: int, took: float) -> None:
        self.base = s.commit_no
        if s.is_delta:
            self.recent.append((s.commit_no, size))
        else:
            self.full_bytes, self.recent, self.offload_failed = size, [], False
        # Full snapshots are rare (they follow the deltas' volume): each is worth a line.
        log.log(logging.DEBUG if s.is_delta else logging.INFO,
                "%s: %s snapshot of commit %d: %d keys, %d bytes, written in %.3fs",
                self.log_subject, "delta" if s.is_delta else "full", s.commit_no, len(s.table),
                size, took)

    async def _trim(self, log_seq: int) -> None:
        await self.nats.purge_subject_below(self.log_stream, self.log_subject, log_seq)

    async def close(self) -> None:
        """Let a snapshot in flight finish (it is consistent either way), and the commits
        held for the next one go."""
        if self.writing is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.writing  # _write logs its own failures and never raises
        if self.compacting is not None:  # not waited for: the helper finishes it either way
            self.compacting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.compacting
        self.forget_held()

    async def restore(self, last_seq: int, read_only: bool = False) -> PartitionState:
        """The partition's state: newest valid snapshot, the stored segments after it (the
        commits since, and a bridge over a newer snapshot that turned out corrupt), then the
        changelog up to `last_seq`. Commits must follow each other without a gap, or the
        restore fails (and is retried) rather than go on with state missing. The spool is left
        holding the records the next segment must cover, those read from the changelog (let
        go if the restore fails): the stored segments' are stored already. `read_only`: the
        state of a partition this checkpointer will not write for (a migration reading an old
        partition, on a checkpointer of its own), so nothing is held for a next segment or
        delta."""
        try:
            return await self._restore(last_seq, holding=not read_only)
        except BaseException:
            self.forget_held()
            raise

    async def _restore(self, last_seq: int, holding: bool) -> PartitionState:
        chain = await self._latest()
        base = None if chain is None else chain.snapshot
        state = base.to_state() if base is not None else PartitionState()
        self.restored_from = self.base = None if base is None else base.commit_no
        self.full_bytes = 0 if chain is None else chain.full_bytes
        self.recent = [] if chain is None else list(chain.applied)
        self.forget_held()
        self.dirty = {}
        if self.cfg.store is not None:  # (segments are stored before a first snapshot too)
            for rec, data in await self._segments_after(state.commit_no):
                self._apply(state, rec, data, holding, stored=True)
        if last_seq == 0 and state.commit_no > 0:
            return self._from_store_alone(state)
        # A snapshot past the changelog's end: the changelog was made anew, read all of it.
        start = base.log_seq if base is not None and base.log_seq <= last_seq else 1
        async for m in self.nats.read_subject(self.log_stream, self.log_subject, last_seq, start,
                                              complete=True):
            rec = CommitRecord.from_wire(m.data)
            if rec.commit_no <= state.commit_no:
                state.last = rec  # already in the snapshot; kept to re-publish its outputs
            else:
                self._apply(state, rec, m.data, holding)
        return state

    def _apply(self, state: PartitionState, rec: CommitRecord, data: bytes, holding: bool,
               stored: bool = False) -> None:
        """`rec` onto `state`; `holding`: and kept for the next segment and delta."""
        if rec.commit_no not in (state.commit_no + 1, state.commit_no + snap.COMMIT_EPOCH + 1):
            msg = (f"{self.log_subject}: commit {rec.commit_no} follows {state.commit_no}: "
                   "commits are missing")
            raise RestoreGapError(msg)
        state.apply(rec)
        if holding:
            self._keep(data, rec.commit_no, stored)
            self.dirty.update(rec.states)

    async def _segments_after(self, commit_no: int) -> list[tuple[CommitRecord, bytes]]:
        assert self.cfg.store is not None
        try:
            return await snap.segments_after(self.cfg.store, self.slug, self.stage, self.part,
                                             commit_no, self.cfg.state_key)
        except snap.CorruptSnapshotError as err:
            log.warning("%s: stored segments unusable (%s); the changelog must cover what they held",
                        self.log_subject, err)
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
        state.commit_no += snap.COMMIT_EPOCH
        # What was read is stored already (in segments): nothing is held, and the next
        # segment starts at the jumped number (a segment's commits must follow each other).
        assert self.held == 0
        self.since = (0, 0)
        return state


def _read_all(spools: list[Spool]) -> list[bytes]:
    return [record for spool in spools for record in spool.read()]


def _discard(spools: list[Spool]) -> None:
    for spool in spools:
        spool.discard()
