"""One partition of one stage, owned by this runner: restore, then fetch -> run -> commit ->
publish -> ack, one input batch at a time (DESIGN.md section 5)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import pickle
import secrets
import time
import traceback
from collections import ChainMap
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from wallaroo.core import codec
from wallaroo.core import repartition as layout
from wallaroo.core.calls import forbid_blocking_calls
from wallaroo.core.changelog import ChangelogOnly, Checkpoints, PartitionState
from wallaroo.core.engine import (
    Batch,
    BatchResult,
    RecordFailed,
    Retrier,
    RetryPolicy,
    StageEngine,
    letter_payload,
)
from wallaroo.core.errors import WallarooError
from wallaroo.core.names import (
    ENDED,
    EOI_PREFIX,
    LAYOUT_PREFIX,
    RECORDS_IN,
    REPLAY_PREFIX,
    TICK_PREFIX,
    AppNames,
    eoi_msg_id,
    eoi_sender,
    internal_msg_id,
    is_control_id,
    parse_internal,
    tagged,
    tick_msg_id,
)
from wallaroo.core.statetable import slots
from wallaroo.core.wire import MALFORMED, CommitRecord, DeadLetter, ReplayBatch
from wallaroo.nats.protocol import Consumer, InMsg, Out, WorkerNats
from wallaroo.plan import Application, Stage

log = logging.getLogger("wallaroo.worker")
# Another partition's state of the worker's stage (part, its changelog's last seq): how a new
# layout's partition reads the old layout's (wallaroo.core.repartition).
RestorePart = Callable[[int, int], Awaitable[PartitionState]]


class Fresh(NamedTuple):
    """An input message not yet committed, with its records' keys and values; or, when its
    bytes did not decode, no records and the dead letter that keeps it whole."""

    msg: InMsg
    keys: list[str | None]
    values: list[Any]
    malformed: DeadLetter | None = None
    ended: str = ""  # an end-of-input message: its sender
    tick: float | None = None  # a micro-batch timer message: the time it stands for
    layout_end: tuple[str, int] | None = None  # an end-of-layout marker: (sender, its commit)


@dataclass(frozen=True)
class WorkerConfig:
    fetch_batch: int = 16
    fetch_timeout: float = 0.25
    max_records: int = 8192
    # Why: a commit's outputs wait for its slowest record; short commits keep latency low and
    # commit records small. (User code runs off the event loop: heartbeats never wait on it.)
    target_commit_seconds: float = 0.2
    # Inputs in hand are kept alive every ack_wait/3 however long their user code runs, so only
    # a silent runner's inputs are delivered again.
    ack_wait: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # State moved into a new partition (wallaroo.core.repartition) per commit record, at
    # most: half a NATS message, or this.
    migrate_bytes: int = 256 * 1024


class _TooBig(Exception):  # noqa: N818 - control flow inside _commit_batch
    pass


# What pickle raises for a value it cannot serialize.
UNSERIALIZABLE: tuple[type[Exception], ...] = (pickle.PicklingError, TypeError, AttributeError)
PAYLOAD_MARGIN = 4096  # headers and framing on top of the commit record
INLINE_SECONDS = 0.05  # a batch predicted to run its user code this long or less runs inline
SLOW_SECONDS = 0.5  # a batch that ran longer sends its partition's user code to a thread
STORE_RETRY = 1.0  # seconds between tries to store a migrated state (the store is down)


class FlushTooLargeError(WallarooError):
    """The end-of-input flush of a partition does not fit in one commit record."""


class LayoutMovedError(WallarooError):
    """An older version was asked to run a partition a newer one re-routed (see
    wallaroo.core.repartition): it refuses rather than route by the old partition count."""


class ResyncNeeded(Exception):  # noqa: N818 - control flow, caught by the worker loop
    """Deliveries skipped a consumer sequence: rebuild the consumer from the commit log."""


@dataclass
class Progress:
    """Counters a runner reports (and the autoscaler will read)."""

    commits: int = 0
    messages: int = 0
    records: int = 0
    dead: int = 0  # dead letters, malformed messages included
    restores: int = 0
    malformed: int = 0  # input messages dead-lettered whole: their bytes did not decode


class CommitObserver(Protocol):
    """Told of each commit and restore of one partition (the runtime's metrics implement it;
    core stays free of any metrics library). Called once per commit, never per record: the
    commit loop is the throughput-sensitive path."""

    def committed(self, seconds: float, records_in: int, records_out: int, dead: int) -> None:
        """A commit of `records_in` input records made `records_out` output records and
        `dead` dead letters, `seconds` after its batch began to run."""

    def restored(self, seconds: float) -> None:
        """The partition's state was restored in `seconds`."""


class _Unobserved:
    """The observer of a worker nobody watches (wallaroo.testing, unit tests)."""

    def committed(self, seconds: float, records_in: int, records_out: int, dead: int) -> None:
        pass

    def restored(self, seconds: float) -> None:
        pass


@dataclass
class RateMeter:
    """Exponentially weighted records/s and input messages/s, for status and the autoscaler."""

    at: float = 0.0
    last_records: int = 0
    last_messages: int = 0
    records: float = 0.0
    messages: float = 0.0

    def update(self, now: float, records: int, messages: int) -> None:
        if self.at == 0.0:
            self.at, self.last_records, self.last_messages = now, records, messages
            return
        elapsed = now - self.at
        if elapsed < 1.0:
            return
        self.records = 0.5 * self.records + 0.5 * (records - self.last_records) / elapsed
        self.messages = 0.5 * self.messages + 0.5 * (messages - self.last_messages) / elapsed
        self.at, self.last_records, self.last_messages = now, records, messages


class PartitionWorker:
    def __init__(
        self, nats: WorkerNats, app: Application, version: str, stage: Stage, part: int,
        config: WorkerConfig, checkpoints: Checkpoints | None = None, *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time, observer: CommitObserver | None = None,
        restore_part: RestorePart | None = None,
    ) -> None:
        """`checkpoints`: where snapshots go (the runner's S3/file Checkpointer); without
        one, state is restored from the changelog alone and nothing is trimmed. `sleep`
        waits out retry backoff: wallaroo.testing passes its fake clock's. `observer` hears
        of every commit and restore (the runner's metrics)."""
        self.nats, self.app, self.version, self.stage, self.part = nats, app, version, stage, part
        self.cfg = config
        self.names = AppNames(app.slug)
        self.engine = StageEngine(app, stage, part)
        self.producer = AppNames.producer(stage.index, part)
        self.log_subject = self.names.log(stage.index, part)
        source = stage.source is not None
        self.in_subject = self.names.input(stage.index, part, source)
        # Why a second subject: clients may write anything to a source stage's input, so the
        # commands a partition obeys (end of input, timers, producer watermarks) come on a
        # subject only runners may write. A keyed stage's input is runner-only: it is both.
        self.ctl_subject = self.names.commands(stage.index, part, source)
        self.subjects = tuple(dict.fromkeys((self.in_subject, self.ctl_subject)))
        self._obeys_any_subject = not source
        self.state = PartitionState()
        self.log_seq = 0
        self.consumer_seq = 0
        self.progress = Progress()
        self.rate = RateMeter()
        self.observer: CommitObserver = observer or _Unobserved()
        # Input messages not yet delivered to this partition, as of its last fetch (JetStream
        # says it in every message's metadata, so knowing it costs no request).
        self.pending = 0
        self._stop = asyncio.Event()
        # Why a nonce in the commit id: two owners writing the same commit number must not
        # look like one retried write to JetStream's dedup, which would hide the fence.
        self.nonce = secrets.token_hex(4)
        self.checkpoints = checkpoints or ChangelogOnly(nats, self.names.log_stream, self.log_subject)
        self._seconds_per_record = 0.0
        self._sleep, self._clock = sleep, clock
        self.deadlines: dict[str, float] = {}  # state slot -> when its micro-batch is due
        self._next_due: float | None = None  # the earliest of them
        self._ticked: float | None = None  # the due time of the timer message published last
        # User code runs here, one call at a time: off the event loop (heartbeats, leases and
        # function executors never wait on a slow step). Batches measured to be short run on
        # the loop instead (_runs_inline); either way one batch at a time, so a state table is
        # never touched by two threads at once (a thread-local client may exist on both).
        self._user_thread: ThreadPoolExecutor | None = None
        self._busy_since: float | None = None  # monotonic start of the user code running now
        self._slow = False  # a batch ran longer than SLOW_SECONDS: never inline again
        # Another partition's state (of the layout this one replaces): the runner's reads
        # its snapshots too; without one, its changelog alone.
        self._restore_part = restore_part or self._changelog_of
        self._old_senders = self.app.senders_of(stage)  # who must end an old partition's layout
        self.drained = False  # an old layout's partition that heard every end of layout

    def stop(self) -> None:
        """Finish the batch in hand, then return from run()."""
        self._stop.set()

    def busy_for(self, now: float | None = None) -> float:
        """Seconds the user code of the batch in hand has been running (0 when none runs):
        what `wallaroo status` shows of a slow step."""
        since = self._busy_since
        if since is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - since)

    async def run(self) -> None:
        await self.restore()
        if not await self.settle_layout():
            return  # stopped while waiting for the old layout to drain
        consumer = await self.open_consumer()
        try:
            while not self._stop.is_set():
                consumer = await self.poll(consumer)
        finally:
            await consumer.close()
            await self.checkpoints.close()
            self.close()

    def close(self) -> None:
        """Let the user-code thread go (a batch still running there finishes unheard)."""
        if self._user_thread is not None:
            self._user_thread.shutdown(wait=False, cancel_futures=True)
            self._user_thread = None

    async def poll(self, consumer: Consumer) -> Consumer:
        """One fetch and its commits; the consumer to fetch from next (a new one after a
        delivery gap). run() loops on it; wallaroo.testing calls it when input is waiting."""
        msgs = await consumer.fetch(self.cfg.fetch_batch, self.cfg.fetch_timeout)
        self.pending = msgs[-1].pending if msgs else 0
        # Every poll, not only idle ones: a steady trickle must not hold a due batch back.
        await self._tick_if_due()
        if not msgs and self.checkpoints.due():
            # Idle: make the newest commits durable in the store too.
            await self.checkpoints.checkpoint(self.state, self.log_seq)
        try:
            await self.handle(msgs)
        except ResyncNeeded:
            log.warning("%s: delivery gap, rebuilding consumer", self.in_subject)
            await consumer.close()
            return await self.open_consumer()
        return consumer

    # --- recovery --------------------------------------------------------------------------

    async def restore(self) -> None:
        started = time.monotonic()
        last = await self.nats.last_on_subject(self.names.log_stream, self.log_subject)
        self.log_seq = last.seq if last else 0
        if last is not None and not self.stage.stateful:
            # Why: stateless stages need only the newest record (it carries full watermarks).
            self.state = PartitionState()
            self.state.apply(CommitRecord.from_wire(last.data))
        else:
            self.state = await self.checkpoints.restore(self.log_seq)
        last_rec = self.state.last
        if last_rec is not None and await self._republish(last_rec):
            # Its inputs were never acked, so its outputs may not all have been published.
            await self._publish(last_rec.outs)
        self.deadlines = self.engine.deadlines_in(self.state.table)
        self._next_due = min(self.deadlines.values(), default=None)
        self._ticked = None
        self.progress.restores += 1
        self.observer.restored(time.monotonic() - started)
        log.info("%s: restored %d commits (snapshot: commit %s), %s state slots, committed seq %d "
                 "in %.3fs", self.log_subject, self.state.commit_no, self.checkpoints.restored_from,
                 slots(self.state.table), self.state.committed_seq, time.monotonic() - started)

    async def _republish(self, rec: CommitRecord) -> bool:
        """Publish the last commit's outputs again? A commit of no inputs (end-of-layout
        markers) cannot tell whether it published: again (same ids) while its target's
        old layout is still run here, so it is drained for sure."""
        if rec.first_seq == 0:
            route = self.stage.route
            return bool(rec.outs) and route is not None and \
                self.app.stages[route.target].prev is not None
        return await self._unacked(rec)

    async def _unacked(self, rec: CommitRecord) -> bool:
        """Are the commit's first and last inputs both still in the work queue? Acks follow
        the publishing of every output, so one ack means they were all published (and
        publishing them again after the dedup window would store them twice). A commit of
        no inputs (first_seq 0) has none to tell."""
        stream = self.names.data_stream
        return rec.first_seq > 0 and (await self.nats.msg_exists(stream, rec.first_seq)
                and await self.nats.msg_exists(stream, rec.last_seq))

    async def open_consumer(self) -> Consumer:
        """A fresh consumer delivers every uncommitted input in stream order: inputs at or
        below the committed seq are purged first (committed, maybe never acked)."""
        stream, durable = self.names.data_stream, AppNames.durable(self.stage.index, self.part)
        for subject in self.subjects:
            await self.nats.purge_subject_below(stream, subject, self.state.committed_seq + 1)
        self.consumer_seq = 0
        subjects = self.subjects if len(self.subjects) > 1 else self.in_subject
        return await self.nats.fresh_consumer(stream, durable, subjects, ack_wait=self.cfg.ack_wait)

    # --- the commit loop -------------------------------------------------------------------

    async def handle(self, msgs: Sequence[InMsg]) -> None:
        fresh, stale = self._triage(msgs)
        # Committed already: acked first, so a long commit below does not see them redelivered.
        await _ack(stale)
        # A step that runs for minutes must not have its inputs delivered again: a redelivery
        # would be skipped as committed, but it costs a fetch and shows as lag meanwhile.
        alive = KeepAlive([f.msg for f in fresh], self.cfg.ack_wait / 3) if fresh else None
        try:
            for chunk in _chunks(fresh, self._record_budget()):
                await self._commit_batch(chunk)
        finally:
            if alive is not None:
                alive.stop()

    def _triage(self, msgs: Sequence[InMsg]) -> tuple[list[Fresh], list[InMsg]]:
        fresh, stale = [], []
        seen = dict(self.state.watermarks)  # raised per message: copies in one fetch count too
        for m in msgs:
            if m.consumer_seq != self.consumer_seq + 1:
                raise ResyncNeeded
            self.consumer_seq = m.consumer_seq
            if m.stream_seq <= self.state.committed_seq or (self._obeys(m) and _seen_producer_seq(m, seen)):
                stale.append(m)
            else:
                fresh.append(self._decode(m))
        return fresh, stale

    def _obeys(self, m: InMsg) -> bool:
        """Does `m`'s id command this partition (end of input, timer, producer watermark)? Only
        on a subject no client may write; elsewhere an id is just the sender's dedup key."""
        return self._obeys_any_subject or m.subject == self.ctl_subject

    def _decode(self, m: InMsg) -> Fresh:
        """The message's records, or its dead letter: a message that does not decode is
        committed as a dead letter and acked like any other, so it never stalls the partition.
        A control id on a client-writable subject is no command: the message is records too."""
        if self._obeys(m):
            sender = eoi_sender(m.msg_id)
            if sender is not None:
                return Fresh(m, [], [], ended=sender)
            marker = layout.parse_marker(m.msg_id)
            if marker is not None:
                return Fresh(m, [], [], layout_end=marker)
            if m.msg_id.startswith(TICK_PREFIX):
                try:
                    return Fresh(m, [], [], tick=float(m.data))
                except ValueError as err:
                    return Fresh(m, [], [], self._malformed(m, err))
        try:
            return Fresh(m, *self._records(m))
        except Exception as err:  # unpickling can raise anything: it is this message's fault
            return Fresh(m, [], [], self._malformed(m, err))

    def _records(self, m: InMsg) -> tuple[list[str | None], list[Any]]:
        """Keys and values of an input message: raw records for a source stage (the decoder
        runs in the engine), (keys, values) pickled by the upstream stage otherwise."""
        if self.stage.source is not None:
            raws = codec.unpack_batch(m.data)
            return [None] * len(raws), raws
        if m.msg_id.startswith(REPLAY_PREFIX):
            # A replayed dead letter: its value was pickled by a runner (`wallaroo dlq replay`
            # cannot unpickle app classes), so it travels as bytes.
            replay = ReplayBatch.from_wire(m.data)
            return replay.keys, [codec.loads(b) for b in replay.blobs]
        return _columns(codec.loads_columns(m.data))

    def _malformed(self, m: InMsg, err: Exception) -> DeadLetter:
        error = f"{type(err).__name__}: {err}{self._not_obeyed(m)}"
        log.warning("%s: message seq %d does not decode, dead-lettered whole: %s",
                    self.in_subject, m.stream_seq, error)
        return DeadLetter(self.stage.name, "decode", MALFORMED, error,
                          "".join(traceback.format_exception(err)), 1, None, bytes(m.data),
                          (m.stream_seq, 0), subject=m.subject or self.in_subject)

    def _not_obeyed(self, m: InMsg) -> str:
        """Why a message with a runner's control id was read as records (a forgery, or a
        control message published to the wrong subject): said in its dead letter."""
        if self._obeys(m) or not is_control_id(m.msg_id):
            return ""
        return (f" (its id {m.msg_id!r} is a runner's control message id, obeyed only on "
                f"{self.ctl_subject}, which clients may not publish to; on {m.subject or self.in_subject} "
                "a message is a record batch whatever its id)")

    async def _commit_batch(self, batch: list[Fresh]) -> None:
        records = Batch()
        for f in batch:
            records.add(f.msg.stream_seq, f.keys, f.values)
        malformed = [f.malformed for f in batch if f.malformed is not None]
        started = time.perf_counter()
        now = max(f.msg.timestamp for f in batch)
        if self.drained:
            await self._commit_after_drain(batch, records, malformed)
            return
        result = _with_letters(await self._execute(records, now=now), malformed)
        self._seconds_per_record = (time.perf_counter() - started) / max(1, len(records))
        _merge(result, await self._timers(batch, result))
        ends, flushed = await self._end_of_input(batch, result)
        _merge(result, flushed)
        try:
            rec, encoded = self._commit_record(batch, result, ends)
        except UNSERIALIZABLE + (_TooBig,) as err:
            if len(batch) > 1:  # commit fewer input messages at a time
                half = len(batch) // 2
                await self._commit_batch(batch[:half])
                await self._commit_batch(batch[half:])
                return
            log.warning("%s: outputs of seq %d cannot be committed (%s); checking records one "
                        "by one", self.in_subject, batch[0].msg.stream_seq, err)
            result = _with_letters(await self._execute(records, check_outputs=self.max_output_bytes,
                                                       now=now), malformed)
            _merge(result, await self._timers(batch, result))
            _merge(result, flushed)
            try:
                rec, encoded = self._commit_record(batch, result, ends)
            except UNSERIALIZABLE + (_TooBig,) as too_big:  # a release's outputs, unchecked
                # Still too big all together (many outputs, a huge state, big dead letters):
                # the message's records go to the dead-letter stream, so the partition flows.
                if ENDED in ends:  # a known limit: the flush at end of input is one commit
                    msg = (f"{self.in_subject}: what the stage holds at end of input does not fit "
                           f"in one commit ({too_big}); deploy the job with more partitions")
                    raise FlushTooLargeError(msg) from None
                result = self._all_dead(records, malformed, str(too_big))
                rec, encoded = self._commit_record(batch, result, ends)
        await self._append(rec, encoded)
        self._note_deadlines(result.deadlines)
        await self._publish(rec.outs)
        await _ack([f.msg for f in batch])
        self._count(result, len(batch), len(malformed))
        self.observer.committed(time.perf_counter() - started, result.records_in,
                                _records_out(result), len(result.dead))
        await self.checkpoints.after_commit(encoded, self.state, self.log_seq)
        self._note_drained()

    async def _commit_after_drain(self, batch: list[Fresh], records: Batch,
                                  malformed: list[DeadLetter]) -> None:
        """A drained old partition's state was moved to the new layout: what still arrives
        (a replayed dead letter, a late timer) changes nothing; its records are dead-lettered
        (`wallaroo dlq replay` sends them on to the new layout), never dropped."""
        why = ("arrived after the stage moved to another partition count; replay it "
               "(`wallaroo dlq replay` sends it to the key's partition now)")
        result = self._all_dead(records, malformed, why, "layout_drained") \
            if records or malformed else BatchResult()
        rec, encoded = self._commit_record(batch, result, {})
        await self._append(rec, encoded)
        await self._publish(rec.outs)
        await _ack([f.msg for f in batch])
        self._count(result, len(batch), len(malformed))
        await self.checkpoints.after_commit(encoded, self.state, self.log_seq)

    @property
    def _layout_ending(self) -> bool:
        """Has a sender ended this partition's layout? Then its timers fire no more: once
        drained its state moves to the new layout, whose partitions fire them (deadlines are
        state). Known from the state, not the version: a worker of an older version, still
        running here while a newer one drains its layout elsewhere, must not fire them either."""
        return any(k.startswith(LAYOUT_PREFIX) for k in self.state.watermarks)

    def _note_drained(self) -> None:
        if self.part in self.stage.prev_parts and not self.drained and \
                layout.drained(self.state.watermarks, self._old_senders):
            self.drained = True
            log.info("%s: every sender ended this layout: drained, its state moves to the "
                     "%d new partitions", self.in_subject, self.stage.partitions)

    # --- layout changes (wallaroo.core.repartition) ------------------------------------------

    async def settle_layout(self) -> bool:
        """Before taking input: a new layout's partition moves its keys' state in from the
        drained old layout (False: stopped while waiting for that), and a sender into a
        re-laid-out stage ends the old layout there."""
        self._note_drained()
        self._refuse_ended_target()
        if self.part in self.stage.parts and self.stage.prev is not None and \
                layout.MIGRATED not in self.state.watermarks:
            if not await self._migrate():
                return False
        await self._end_old_layout()
        return True

    def _refuse_ended_target(self) -> None:
        """A newer version ran this partition and ended the layout this version would route
        into (the keys' state has moved on): routing there would split a key's records."""
        route = self.stage.route
        if route is None:
            return
        target = self.app.stages[route.target]
        if layout.sent_key(target.index, target.base) in self.state.watermarks:
            msg = (f"{self.in_subject}: a newer version of {self.app.name} re-partitioned stage "
                   f"{target.index} ({target.name}) and this partition already routes to its new "
                   f"partitions; version {self.version} cannot run it: load the newer version here")
            raise LayoutMovedError(msg)

    async def _migrate(self) -> bool:
        old = self.stage.prev_parts
        while True:
            found = [await self._last(p) for p in old]
            lasts = [rec for rec, _ in found]
            marks = [rec.watermarks if rec else {} for rec in lasts]
            if all(layout.drained(m, self._old_senders) for m in marks) and \
                    await self._all_published(lasts):
                break
            if await _stopped_within(self._stop, 0.25):
                return False
        # Drained partitions change no state any more: their states as of these reads are final.
        tables = [(await self._restore_part(p, seq)).table for p, (_, seq) in zip(old, found, strict=True)
                  ] if self.stage.stateful else []
        index = self.part - self.stage.base
        table = layout.split_table(tables, index, self.stage.partitions)
        budget = min(self.cfg.migrate_bytes, (self.nats.max_payload - PAYLOAD_MARGIN) // 2)
        # (a stateless stage moves no state: its migration never waits for the store)
        stores = self.checkpoints.stores and self.stage.stateful
        records = layout.migration_records(table, layout.merged_watermarks(marks), budget,
                                           marker_apart=stores)
        # A resumed migration appends the missing ones; after a restore from the state store
        # alone (its commit number jumped) all again: same slots, same values.
        done = self.state.commit_no if self.state.commit_no < len(records) else 0
        for rec in records[done:]:
            # With a store, MIGRATED (what makes the stage settled, and the old layout go) is
            # appended once a snapshot holds the moved state: losing the changelog later then
            # never loses it.
            if stores and layout.MIGRATED in rec.watermarks and not await self._moved_state_stored():
                return False
            rec = replace(rec, commit_no=self.state.commit_no + 1)
            encoded = rec.to_wire()
            await self._append(rec, encoded)
            await self.checkpoints.after_commit(encoded, self.state, self.log_seq)
        if stores:  # and soon one that says MIGRATED too (in the background, as any snapshot)
            await self.checkpoints.checkpoint(self.state, self.log_seq)
        self.deadlines = self.engine.deadlines_in(self.state.table)
        self._next_due = min(self.deadlines.values(), default=None)
        log.info("%s: moved in %d state slots from %d old partitions", self.in_subject,
                 len(table), len(old))
        return True

    async def _moved_state_stored(self) -> bool:
        """Until a snapshot of the state as moved in is in the store (False: stopped first)."""
        while not await self.checkpoints.snapshot_now(self.state, self.log_seq):
            log.warning("%s: the moved state is not stored yet; retrying before the stage "
                        "may settle", self.in_subject)
            if await _stopped_within(self._stop, STORE_RETRY):
                return False
        return True

    async def _all_published(self, lasts: list[CommitRecord | None]) -> bool:
        """Were the outputs of the old partitions' last commits published (their inputs
        acked)? Once the stage settles nobody runs those partitions to publish them again."""
        for rec in lasts:
            if rec is not None and await self._unacked(rec):
                return False
        return True

    async def _last(self, part: int) -> tuple[CommitRecord | None, int]:
        """The newest commit of partition `part` of this stage (full watermarks, always) and
        its changelog sequence (0: none), from one read."""
        last = await self.nats.last_on_subject(self.names.log_stream, self.names.log(self.stage.index, part))
        return (CommitRecord.from_wire(last.data), last.seq) if last is not None else (None, 0)

    async def _changelog_of(self, part: int, last_seq: int) -> PartitionState:
        subject = self.names.log(self.stage.index, part)
        return await ChangelogOnly(self.nats, self.names.log_stream, subject).restore(last_seq)

    async def _end_old_layout(self) -> None:
        """One fenced commit whose outputs end the target's old layout for this sender: the
        fence puts it after every commit an earlier owner made, so after all it routed there."""
        route = self.stage.route
        target = self.app.stages[route.target] if route is not None else None
        if target is None or target.prev is None:
            return
        key = layout.sent_key(target.index, target.prev[0])
        if key in self.state.watermarks:
            return
        no = self.state.commit_no + 1
        outs = [Out(self.names.data(target.index, p), b"",
                    layout.marker_msg_id(self.producer, no, target.index, p))
                for p in target.prev_parts]
        rec = CommitRecord(commit_no=no, first_seq=0, last_seq=0,
                           watermarks={**self.state.watermarks, key: 1}, states={}, outs=outs)
        encoded = rec.to_wire()
        await self._append(rec, encoded)
        await self._publish(outs)
        await self.checkpoints.after_commit(encoded, self.state, self.log_seq)

    def _commit_record(self, batch: list[Fresh], result: BatchResult, ends: dict[str, int]
                       ) -> tuple[CommitRecord, bytes]:
        watermarks = dict(self.state.watermarks)
        for f in batch:
            origin = parse_internal(f.msg.msg_id) if self._obeys(f.msg) else None
            if origin is not None:
                watermarks[origin[0]] = max(origin[1], watermarks.get(origin[0], 0))
            if f.layout_end is not None:  # the sender routes nothing more here
                sender, no = f.layout_end
                watermarks[sender] = max(no, watermarks.get(sender, 0))
                watermarks[layout.heard_key(sender)] = 1
        watermarks.update(ends)
        if self.stage.source is not None and result.records_in:
            watermarks[RECORDS_IN] = watermarks.get(RECORDS_IN, 0) + result.records_in
        outs = self._outputs(result, self.state.commit_no + 1)
        if ENDED in ends:
            outs += self._end_messages()
        rec = CommitRecord(
            commit_no=self.state.commit_no + 1, first_seq=batch[0].msg.stream_seq,
            last_seq=batch[-1].msg.stream_seq, watermarks=watermarks, states=result.states,
            outs=outs,
        )
        encoded = rec.to_wire()
        if len(encoded) > self.nats.max_payload - PAYLOAD_MARGIN:
            msg = f"commit record of {len(encoded)} bytes exceeds the NATS max payload"
            raise _TooBig(msg)
        return rec, encoded

    async def _end_of_input(self, batch: list[Fresh], result: BatchResult
                            ) -> tuple[dict[str, int], BatchResult]:
        """The ends this batch brings (watermarks "eoi:<sender>"), and ENDED once every sender
        of this stage has ended; then also what the stage held back (windows), flushed after
        the batch's own records, to commit with them."""
        ends = {f"{EOI_PREFIX}{f.ended}": 1 for f in batch if f.ended}
        if not ends or ENDED in self.state.watermarks:  # every commit but a rare few: no scan
            return ends, BatchResult()
        heard = {k[len(EOI_PREFIX):] for k in (*self.state.watermarks, *ends) if k.startswith(EOI_PREFIX)}
        expected = self.app.senders_of(self.stage)
        if not expected <= heard:
            return ends, BatchResult()
        flushed = BatchResult()
        if self.engine.holds_back:
            table = ChainMap(result.states, self.state.table)
            flushed = await self._off_loop(self.engine.end_of_input, table)
        log.info("%s: end of input from all %d senders: flushed", self.in_subject, len(expected))
        return {**ends, ENDED: 1}, flushed

    async def _timers(self, batch: list[Fresh], result: BatchResult) -> BatchResult:
        """The micro-batches due at the latest timer message of `batch`, fired after the
        batch's records (none without a timer message)."""
        ticks = [f.tick for f in batch if f.tick is not None]
        if not ticks or self._layout_ending:
            return BatchResult()
        now = max(ticks)
        known = {**self.deadlines, **result.deadlines}
        due = [slot for slot, at in known.items() if at is not None and at <= now]
        table = ChainMap(result.states, self.state.table)
        return await self._off_loop(self.engine.release, table, now, due)

    def _note_deadlines(self, changed: dict[str, float | None]) -> None:
        """Keep the earliest deadline without scanning them all on every commit: only when
        the slot that held it fired or moved later."""
        stale = False
        for slot, due in changed.items():
            before = self.deadlines.pop(slot, None) if due is None else self.deadlines.get(slot)
            if due is not None:
                self.deadlines[slot] = due
                if self._next_due is None or due < self._next_due:
                    self._next_due = due
            stale = stale or (before is not None and before == self._next_due and due != before)
        if stale:
            self._next_due = min(self.deadlines.values(), default=None)

    async def _tick_if_due(self) -> None:
        """A micro-batch due: a timer message into this partition's own control input (once per
        due time: `_ticked`; a second copy would find nothing due)."""
        due = self._next_due
        if due is None or due > self._clock() or self._ticked == due or self._layout_ending:
            return
        tick = tagged(tick_msg_id(self.producer, due), secrets.token_hex(8))
        await self.nats.publish_all([Out(self.ctl_subject, repr(due).encode(), tick)])
        self._ticked = due

    def _end_messages(self) -> list[Out]:
        """End of input for every partition of the next stage (none for a last stage: its
        ENDED commit is what a job's progress reads)."""
        route = self.stage.route
        if route is None:
            return []
        parts = self.app.stages[route.target].parts
        return [Out(self.names.data(route.target, p), b"", eoi_msg_id(self.producer, route.target, p))
                for p in parts]

    async def _publish(self, outs: list[Out]) -> None:
        """A commit's outputs, ends of input last and only once the rest is stored: the next
        stage must never see an end before the records it follows. Those into the data stream
        tagged afresh (names.tagged: a client cannot have taken their ids first)."""
        outs = self._tagged(outs)
        data = [o for o in outs if not o.msg_id.startswith(EOI_PREFIX)]
        await self.nats.publish_all(data)
        if len(data) < len(outs):
            await self.nats.publish_all([o for o in outs if o.msg_id.startswith(EOI_PREFIX)])

    def _tagged(self, outs: list[Out]) -> list[Out]:
        tag = secrets.token_hex(8)
        return [Out(o.subject, o.payload, tagged(o.msg_id, tag)) if self.names.runner_queue(o.subject)
                else o for o in outs]

    async def _off_loop(self, fn: Callable[..., BatchResult], *args: Any, **kwargs: Any) -> BatchResult:
        """`fn(*args, **kwargs)` (user code) on this worker's thread, timed for busy_for.
        Steps that call functions block on results there too, while this runner's own
        executors (which may serve those very calls) keep running on the loop."""
        if self._user_thread is None:
            # A step of a pipeline not attached to an App gets no call ids derived from its
            # records, so its thread refuses function calls (as the event loop's does).
            refuse = forbid_blocking_calls if self.engine.scope is None else None
            self._user_thread = ThreadPoolExecutor(1, f"wallaroo {self.in_subject}", refuse)
        # Like asyncio.to_thread: the caller's context variables travel with the call.
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        self._busy_since = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._user_thread, call)
        finally:
            self._busy_since = None

    async def _append(self, rec: CommitRecord, encoded: bytes) -> None:
        self.log_seq = await self.nats.append_fenced(
            self.names.log_stream, self.log_subject, encoded,
            f"c:{self.producer}:{rec.commit_no}:{self.nonce}", self.log_seq,
        )
        self.state.apply(rec)

    def _all_dead(self, records: Batch, malformed: list[DeadLetter], why: str,
                  reason: str = "commit_too_large") -> BatchResult:
        """Every record of `records` dead-lettered, and the malformed messages' letters, each
        payload cut to fit; state untouched."""
        limit = self.max_output_bytes // max(1, len(records) + len(malformed))
        dead = [DeadLetter(self.stage.name, "commit", reason, why, "", 1, item.key,
                           _cut(item.value, limit, self.stage.source is not None), item.rid)
                for item in records.items()]
        dead += [_cut_letter(d, limit) for d in malformed]
        return BatchResult(dead=dead, records_in=len(records))

    @property
    def max_output_bytes(self) -> int:
        """An output larger than this is dead-lettered (it could never be committed)."""
        return max(1024, self.nats.max_payload // 16)

    def _record_budget(self) -> int:
        """Records per commit: as many as run in about `target_commit_seconds`, or in
        INLINE_SECONDS while the partition's user code may run inline (shorter commits keep
        the loop free between them)."""
        if self._seconds_per_record <= 0:
            return self.cfg.max_records
        seconds = self.cfg.target_commit_seconds
        if self._may_run_inline:
            seconds = min(seconds, INLINE_SECONDS)
        fits = int(seconds / self._seconds_per_record)
        return max(1, min(self.cfg.max_records, fits))

    @property
    def _may_run_inline(self) -> bool:
        return not self._slow and self.engine.scope is None

    def _count(self, result: BatchResult, messages: int, malformed: int) -> None:
        self.progress.commits += 1
        self.progress.messages += messages
        self.progress.records += result.records_in
        self.progress.dead += len(result.dead)
        self.progress.malformed += malformed

    async def _execute(self, items: Batch, check_outputs: int | None = None, now: float = 0.0
                       ) -> BatchResult:
        retrier = Retrier(self.cfg.retry, self.stage.name, raw=self.stage.source is not None)
        while True:
            try:
                return await self._attempt(items, retrier, check_outputs, now)
            except RecordFailed as failed:
                delay = retrier.on_failure(failed)
                log.warning("%s: %s (attempt %d)", self.in_subject, failed,
                            retrier.failures[failed.item.rid])
                if delay:
                    await self._sleep(delay)

    async def _attempt(self, items: Batch, retrier: Retrier, check_outputs: int | None,
                       now: float) -> BatchResult:
        call = functools.partial(self.engine.attempt, items, self.state.table, retrier.dead,
                                 check_outputs=check_outputs, now=now)
        started, predicted = time.monotonic(), self._seconds_per_record * len(items)
        try:
            if self._runs_inline(predicted):
                self._busy_since = started
                try:
                    return call()
                finally:
                    self._busy_since = None
            return await self._off_loop(call)
        finally:
            self._note_duration(time.monotonic() - started, predicted)

    def _runs_inline(self, predicted: float) -> bool:
        """Run this batch's user code on the event loop? Only a batch this partition's own
        measurements say is short (the first always goes to the thread), of steps that call
        no functions (their calls may be served by this very loop). Why at all: handing a
        short batch to a thread costs a wake-up each way and a tug-of-war over the GIL with
        the loop, which at a steady 20k records/s was most of the latency. (The 1.5: commits
        are cut to INLINE_SECONDS of records, and per-record costs wobble batch to batch.)"""
        return self._may_run_inline and 0 < predicted <= INLINE_SECONDS * 1.5

    def _note_duration(self, seconds: float, predicted: float) -> None:
        """A batch that ran long, and far longer than its records promised, makes the
        partition's user code a thread's for good: it may block again, and the loop must stay
        free for heartbeats and leases. (A long batch that was expected, a backlog's, is no
        sign of a step that blocks.)"""
        if seconds > max(SLOW_SECONDS, 5 * predicted) and not self._slow:
            self._slow = True
            log.info("%s: a batch ran %.2fs: its user code runs on its own thread from now on",
                     self.in_subject, seconds)

    def _outputs(self, result: BatchResult, commit_no: int) -> list[Out]:
        outs: list[tuple[str, bytes]] = []
        route = self.stage.route
        for part, columns in sorted(result.routed.items()):
            assert route is not None
            base = self.app.stages[route.target].base  # routing counts from 0 in the layout
            outs.append((self.names.data(route.target, base + part), codec.dumps_columns(*columns)))
        for sink, payloads in sorted(result.sink_out.items()):
            if payloads:  # a commit that emitted nothing (windows filling) stores no message
                outs.append((self.names.out(self.app.sinks[sink].name), codec.pack_batch(payloads)))
        for dead in result.dead:
            outs.append((self.names.dlq(self.stage.index), self._dead_letter(dead)))
        return [Out(s, p, internal_msg_id(self.producer, commit_no, k)) for k, (s, p) in enumerate(outs)]

    def _dead_letter(self, dead: DeadLetter) -> bytes:
        return dead.placed(self.app.name, self.version, time.time(), self.stage.index,
                           self.part).to_wire()


class KeepAlive:
    """Until stopped, reset the ack_wait of `msgs` every `every` seconds (an acked message
    ignores it). A timer, not a task, while nothing is due: most batches end long before."""

    def __init__(self, msgs: list[InMsg], every: float) -> None:
        self.msgs, self.every = msgs, every
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(every, self._due)
        self._sending: asyncio.Task[None] | None = None

    def stop(self) -> None:
        self._timer.cancel()  # a beat being sent goes on: harmless for acked messages

    def _due(self) -> None:
        if self._sending is None or self._sending.done():
            self._sending = self._loop.create_task(_in_progress(self.msgs))
        self._timer = self._loop.call_later(self.every, self._due)


async def _ack(msgs: Sequence[InMsg]) -> None:
    """Ack each message. One after another, not gathered: an ack is a buffered publish that
    waits for nothing, and gather made a task per message on the loop every partition shares."""
    for m in msgs:
        await m.ack()


async def _in_progress(msgs: list[InMsg]) -> None:
    for m in msgs:
        if m.in_progress is not None:
            with contextlib.suppress(Exception):  # a missed beat only risks a redelivery
                await m.in_progress()


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _seen_producer_seq(m: InMsg, seen: dict[str, int]) -> bool:
    """A stage's output seen already (re-published after the dedup window, or a second copy
    in this very fetch): its commit number tells. Accepting it raises `seen`."""
    origin = parse_internal(m.msg_id)
    if origin is None:
        return False
    if origin[1] <= seen.get(origin[0], 0):
        return True
    seen[origin[0]] = origin[1]
    return False


def _chunks(fresh: list[Fresh], max_records: int) -> list[list[Fresh]]:
    """Group input messages into commits of at most `max_records` records (at least one
    message each), so a commit record stays well under the NATS max payload."""
    chunks: list[list[Fresh]] = []
    size = 0
    for entry in fresh:
        n = len(entry.values)  # 0 for a malformed message: it rides along with any commit
        if not chunks or size + n > max_records:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += n
    return chunks


def _cut(value: Any, limit: int, raw: bool) -> bytes:
    return letter_payload(value, raw)[:limit]


def _cut_letter(letter: DeadLetter, limit: int) -> DeadLetter:
    """A malformed message's letter in at most about `limit` bytes: its payload's start."""
    if len(letter.payload) + len(letter.error) + len(letter.traceback) <= limit:
        return letter
    keep = limit // 2
    error = f"{letter.error[:keep]} (a message of {len(letter.payload)} bytes, cut to {keep})"
    return replace(letter, payload=letter.payload[:keep], error=error, traceback="")


def _merge(result: BatchResult, more: BatchResult) -> None:
    """`more`'s outputs after `result`'s (same partitions and sinks), its states over them."""
    for part, (keys, values) in more.routed.items():
        into = result.routed.setdefault(part, ([], []))
        into[0].extend(keys)
        into[1].extend(values)
    for sink, outs in more.sink_out.items():
        result.sink_out.setdefault(sink, []).extend(outs)
    result.states.update(more.states)
    result.deadlines.update(more.deadlines)
    result.dead += more.dead


def _records_out(result: BatchResult) -> int:
    """Records a commit hands on: to the next stage and to sinks (dead letters apart)."""
    routed = sum(len(values) for _, values in result.routed.values())
    return routed + sum(len(payloads) for payloads in result.sink_out.values())


def _with_letters(result: BatchResult, malformed: list[DeadLetter]) -> BatchResult:
    """`result` with the malformed messages' letters: committed with it, so exactly once."""
    result.dead += malformed
    return result


def _columns(body: Any) -> tuple[list[str | None], list[Any]]:
    """(keys, values) as an upstream stage pickled them; anything else is no input batch."""
    if type(body) is not tuple or len(body) != 2:
        msg = f"an internal batch is a (keys, values) pair, not {type(body).__name__}"
        raise TypeError(msg)
    keys, values = body
    if type(keys) is not list or type(values) is not list or len(keys) != len(values):
        msg = "an internal batch's keys and values are two lists of one length"
        raise TypeError(msg)
    return keys, values
