"""`MemoryNats`: the partition worker's part of NATS (`WorkerNats`) in memory, for unit tests of
the commit protocol and for `wallaroo.testing`. Integration tests run the same worker on a real
nats-server; this double keeps the JetStream semantics that worker relies on:

- a stream captures subjects by wildcard (`wl.app.d.>`) and numbers messages with one
  sequence shared by all of its subjects;
- a `Nats-Msg-Id` seen within the stream's dedup window is not stored again (the publish is
  answered with the first copy's seq); acks and purges do not forget ids;
- in a work-queue stream an acked message is removed;
- a pull consumer numbers its deliveries (the consumer seq; redeliveries included), counts each
  message's deliveries, redelivers what was not acked within `ack_wait` (on the injected
  clock), and `fresh_consumer` replaces it (acks to the replaced one are lost);
- a fenced append fails unless the subject's last message is still the expected one (or is
  this very append, stored by an earlier try).

Faults real servers produce only by bad luck are injected by hand: `drop_next_delivery` (a
consumer-sequence gap), `drop_next_ack` (an ack lost on its way), `fail_next_publish`, and the
`before_append` / `after_append` / `after_publish` hooks, which may raise to stop the caller
right there (a crash between the append and the publish, say). Another owner's append is just
a `publish` to the changelog subject."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from wallaroo.core.errors import FencedError, WallarooError
from wallaroo.nats.protocol import InMsg, Out, StoredMsg

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload


class NoStreamError(WallarooError, LookupError):
    """A publish to a subject that no stream captures (JetStream: no responders)."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"no stream captures subject {subject!r}: call ensure_stream(...) first")


class UnknownStreamError(WallarooError, LookupError):
    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"no stream named {stream!r}: call ensure_stream(...) first")


class MaxPayloadError(WallarooError, ValueError):
    """A message larger than the server (or the stream) accepts."""

    def __init__(self, subject: str, size: int, max_payload: int) -> None:
        self.subject, self.size, self.max_payload = subject, size, max_payload
        super().__init__(f"a message of {size} bytes to {subject!r} exceeds the limit of "
                         f"{max_payload} bytes")


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a trailing `>` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


@dataclass
class _Stream:
    name: str
    subjects: tuple[str, ...]
    work_queue: bool
    dedup_window: float | None  # None: ids are remembered forever
    max_msg_size: int
    last_seq: int = 0
    msgs: dict[int, StoredMsg] = field(default_factory=dict)
    # subject -> its seqs, in order (a dict: ordered, and O(1) removal)
    by_subject: dict[str, dict[int, None]] = field(default_factory=dict)
    ids: dict[str, tuple[int, float]] = field(default_factory=dict)  # msg id -> (seq, stored at)
    stored_at: dict[int, float] = field(default_factory=dict)  # seq -> when (the clock's time)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def captures(self, subject: str) -> bool:
        return any(subject_matches(p, subject) for p in self.subjects)

    def duplicate_of(self, msg_id: str, now: float) -> int | None:
        """The seq of the first copy of `msg_id` if it is still within the dedup window."""
        seen = self.ids.get(msg_id) if msg_id else None
        if seen is None:
            return None
        if self.dedup_window is not None and now - seen[1] >= self.dedup_window:
            return None
        return seen[0]

    def store(self, subject: str, data: bytes, msg_id: str, now: float) -> int:
        self.last_seq += 1
        seq = self.last_seq
        self.msgs[seq] = StoredMsg(seq, subject, data, msg_id)
        self.stored_at[seq] = now
        self.by_subject.setdefault(subject, {})[seq] = None
        if msg_id:
            self.ids[msg_id] = (seq, now)
        # Why swap the event: waiters hold the old one, which this wakes; later ones wait anew.
        self.arrived.set()
        self.arrived = asyncio.Event()
        return seq

    def remove(self, seq: int) -> None:
        msg = self.msgs.pop(seq, None)
        self.stored_at.pop(seq, None)
        if msg is not None:
            del self.by_subject[msg.subject][seq]

    def seqs(self, subject: str, start: int = 1) -> Iterator[int]:
        """Seqs of the stored messages on `subject` (wildcards allowed) from `start`, in order."""
        if "*" in subject or ">" in subject:
            return (s for s, m in self.msgs.items() if s >= start and subject_matches(subject, m.subject))
        return (s for s in self.by_subject.get(subject, {}) if s >= start)

    def last_on(self, subject: str) -> StoredMsg | None:
        seqs = self.by_subject.get(subject)
        return self.msgs[next(reversed(seqs))] if seqs else None


@dataclass
class _Delivery:
    count: int
    deadline: float  # redelivered once the clock passes this, unless acked


class MemoryConsumer:
    """A durable pull consumer of one or more subjects, delivering in stream order
    (redeliveries first)."""

    def __init__(self, nats: MemoryNats, stream: _Stream, subjects: tuple[str, ...],
                 start_seq: int | None, ack_wait: float, max_ack_pending: int) -> None:
        self._nats, self._stream, self.subjects = nats, stream, subjects
        self.ack_wait, self.max_ack_pending = ack_wait, max_ack_pending
        self.next_seq = max(1, start_seq or 1)  # the lowest stream seq never delivered yet
        self.consumer_seq = 0
        self.pending: dict[int, _Delivery] = {}  # delivered, not acked: stream seq -> delivery
        self.live = True  # False once fresh_consumer replaced it (or it was deleted)

    async def fetch(self, batch: int, timeout: float) -> list[InMsg]:
        msgs = self._take(batch)
        if msgs or timeout <= 0 or not self.live:
            return msgs
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stream.arrived.wait(), timeout)
        return self._take(batch)

    async def close(self) -> None:
        """Like unsubscribing: the durable consumer (and what it holds unacked) stays."""
        return None

    def _take(self, batch: int) -> list[InMsg]:
        if not self.live:
            return []
        now = self._nats.clock()
        out: list[InMsg] = []
        for seq in self._due(now):
            if len(out) >= batch:
                return out
            self._deliver(seq, now, out, 0)
        fresh = self._fresh()
        for i, seq in enumerate(fresh):
            if len(out) >= batch or len(self.pending) >= self.max_ack_pending:
                break
            self.next_seq = seq + 1
            self._deliver(seq, now, out, len(fresh) - i - 1)
        return out

    def _fresh(self) -> list[int]:
        """Seqs never delivered yet, in stream order across the consumer's subjects."""
        if len(self.subjects) == 1:
            return list(self._stream.seqs(self.subjects[0], self.next_seq))
        return sorted(seq for subject in self.subjects for seq in self._stream.seqs(subject, self.next_seq))

    def _due(self, now: float) -> list[int]:
        """Delivered messages whose ack_wait ran out, in stream order; gone ones forgotten."""
        due = sorted(s for s, d in self.pending.items() if d.deadline <= now)
        for seq in [s for s in due if s not in self._stream.msgs]:
            del self.pending[seq]
        return [s for s in due if s in self._stream.msgs]

    def _deliver(self, seq: int, now: float, out: list[InMsg], pending: int) -> None:
        prior = self.pending.get(seq)
        count = prior.count + 1 if prior else 1
        self.pending[seq] = _Delivery(count, now + self.ack_wait)
        self.consumer_seq += 1
        m = self._stream.msgs[seq]
        if self._nats.take_fault(self._nats.dropped_deliveries, m.subject):
            return  # lost on its way: the consumer seq moved on, the message stays pending
        out.append(InMsg(m.data, m.msg_id, seq, self.consumer_seq, count, pending,
                         functools.partial(self._ack, seq), functools.partial(self._progress, seq),
                         timestamp=self._stream.stored_at.get(seq, 0.0), subject=m.subject))

    async def _progress(self, seq: int) -> None:
        """Like JetStream's in-progress ack: the message's ack_wait starts again."""
        delivery = self.pending.get(seq)
        if self.live and delivery is not None:
            delivery.deadline = self._nats.clock() + self.ack_wait

    async def _ack(self, seq: int) -> None:
        if not self.live or seq not in self.pending:
            return  # a replaced consumer's ack goes nowhere; a second ack changes nothing
        stored = self._stream.msgs.get(seq)
        if self._nats.take_fault(self._nats.dropped_acks, stored.subject if stored else ""):
            return
        del self.pending[seq]
        if self._stream.work_queue:
            self._stream.remove(seq)


@dataclass
class _PublishFault:
    error: BaseException
    stored: int  # how many of the messages are stored before the failure


class MemoryNats:
    """JetStream streams and pull consumers in memory; see the module docstring.

    `clock` (seconds) times the dedup window and ack_wait: tests pass a fake one and move it."""

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_payload = max_payload
        self.clock = clock
        self.streams: dict[str, _Stream] = {}
        self.consumers: dict[tuple[str, str], MemoryConsumer] = {}
        self.dropped_deliveries: dict[str, int] = {}  # subject -> deliveries still to lose
        self.dropped_acks: dict[str, int] = {}  # subject -> acks still to lose
        self.publish_faults: list[_PublishFault] = []
        # Hooks, called where they say; one that raises stops its caller at that point.
        self.before_append: Callable[[str], None] | None = None  # (subject)
        self.after_append: Callable[[str, int], None] | None = None  # (subject, seq)
        self.after_publish: Callable[[Sequence[Out]], None] | None = None  # publish_all's outs

    # --- faults ----------------------------------------------------------------------------

    def drop_next_delivery(self, subject: str, count: int = 1) -> None:
        """The next `count` deliveries on `subject` are lost on their way (they stay pending
        and come back after ack_wait): a consumer-sequence gap, as after a lost pull reply."""
        self.dropped_deliveries[subject] = self.dropped_deliveries.get(subject, 0) + count

    def drop_next_ack(self, subject: str, count: int = 1) -> None:
        """The next `count` acks of messages on `subject` never reach the server."""
        self.dropped_acks[subject] = self.dropped_acks.get(subject, 0) + count

    def fail_next_publish(self, error: BaseException | None = None, *, stored: int = 0) -> None:
        """The next publish_all stores its first `stored` messages, then raises `error` (by
        default the TimeoutError the real client raises when JetStream does not answer)."""
        error = error or TimeoutError("message(s) not acknowledged by JetStream (injected)")
        self.publish_faults.append(_PublishFault(error, stored))

    @staticmethod
    def take_fault(faults: dict[str, int], subject: str) -> bool:
        left = faults.get(subject, 0)
        if left > 0:
            faults[subject] = left - 1
        return left > 0

    # --- streams ---------------------------------------------------------------------------

    async def ensure_stream(
        self, name: str, subjects: list[str], *, work_queue: bool = False,
        dedup_window: float | None = None, max_msg_size: int = -1,
    ) -> None:
        """Create the stream unless it exists; an existing one only gains the subjects it
        lacks (as the real client brings a stream made by an older version up to date)."""
        known = self.streams.get(name)
        if known is None:
            self.streams[name] = _Stream(name, tuple(subjects), work_queue, dedup_window, max_msg_size)
        else:
            known.subjects += tuple(s for s in subjects if s not in known.subjects)

    async def stream_last_seq(self, stream: str) -> int:
        return self._named(stream).last_seq

    def count(self, stream: str, subject: str) -> int:
        """How many messages `stream` holds on `subject` (in a work queue: not yet acked)."""
        return sum(1 for _ in self._named(stream).seqs(subject))

    def messages(self, stream: str, subject: str = ">") -> list[StoredMsg]:
        """The messages stored in `stream` on `subject` (wildcards allowed), in order."""
        s = self._named(stream)
        return [s.msgs[seq] for seq in s.seqs(subject)]

    def _named(self, stream: str) -> _Stream:
        found = self.streams.get(stream)
        if found is None:
            raise UnknownStreamError(stream)
        return found

    def _capturing(self, subject: str) -> _Stream:
        for s in self.streams.values():
            if s.captures(subject):
                return s
        raise NoStreamError(subject)

    # --- publishing ------------------------------------------------------------------------

    async def publish(self, subject: str, payload: bytes, msg_id: str | None = None) -> int:
        """Store a message (unless its id is a duplicate); its seq, or the first copy's."""
        s = self._capturing(subject)
        now = self.clock()
        first = s.duplicate_of(msg_id or "", now)
        if first is not None:
            return first
        self._check_size(s, subject, payload)
        return s.store(subject, payload, msg_id or "", now)

    def _check_size(self, s: _Stream, subject: str, payload: bytes) -> None:
        limit = min(self.max_payload, s.max_msg_size) if s.max_msg_size > 0 else self.max_payload
        if len(payload) > limit:
            raise MaxPayloadError(subject, len(payload), limit)

    async def publish_all(self, outs: Sequence[Out]) -> set[str]:
        fault = self.publish_faults.pop(0) if self.publish_faults else None
        dropped = set()
        for i, o in enumerate(outs):
            if fault is not None and i >= fault.stored:
                raise fault.error
            if o.msg_id and self._capturing(o.subject).duplicate_of(o.msg_id, self.clock()) is not None:
                dropped.add(o.msg_id)
            await self.publish(o.subject, o.payload, o.msg_id)
        if fault is not None:
            raise fault.error  # all stored, but the answer was lost
        if self.after_publish is not None:
            self.after_publish(outs)
        return dropped

    async def append_fenced(
        self, stream: str, subject: str, payload: bytes, msg_id: str, last_seq: int
    ) -> int:
        """As JetStream checks a publish: a duplicate id first (answered with the first copy's
        seq), then Nats-Expected-Last-Subject-Sequence."""
        if self.before_append is not None:
            self.before_append(subject)
        s = self._capturing(subject)  # as a real publish: the subject picks the stream
        if s is not self._named(stream):
            msg = f"subject {subject!r} is in stream {s.name}, not {stream}"
            raise ValueError(msg)
        seq = s.duplicate_of(msg_id, self.clock())
        if seq is None:
            seq = self._append(s, subject, payload, msg_id, last_seq)
        if self.after_append is not None:
            self.after_append(subject, seq)
        return seq

    def _append(self, s: _Stream, subject: str, payload: bytes, msg_id: str, last_seq: int) -> int:
        last = s.last_on(subject)
        if (last.seq if last else 0) != last_seq:
            if last is not None and last.msg_id == msg_id:
                return last.seq  # as the real client: our own earlier try landed
            raise FencedError(subject, last_seq)
        self._check_size(s, subject, payload)
        return s.store(subject, payload, msg_id, self.clock())

    # --- reading ---------------------------------------------------------------------------

    async def last_on_subject(self, stream: str, subject: str) -> StoredMsg | None:
        return self._named(stream).last_on(subject)

    async def read_subject(
        self, stream: str, subject: str, upto: int, start: int = 1, complete: bool = False,
    ) -> AsyncIterator[StoredMsg]:
        s = self._named(stream)
        seq = start - 1
        for found in list(s.seqs(subject, start)):
            if found > upto:
                break
            if found in s.msgs:  # a reader of a changing stream skips what went meanwhile
                seq = found
                yield s.msgs[found]
        if complete and seq < upto:
            msg = f"reading {subject} stopped at seq {seq} of {upto}: retry"
            raise TimeoutError(msg)

    async def msg_exists(self, stream: str, seq: int) -> bool:
        return seq in self._named(stream).msgs

    async def purge_subject_below(self, stream: str, subject: str, seq: int) -> None:
        s = self._named(stream)
        for old in [x for x in s.seqs(subject) if x < seq]:
            s.remove(old)

    # --- consumers -------------------------------------------------------------------------

    async def fresh_consumer(
        self, stream: str, durable: str, subject: str | Sequence[str], start_seq: int | None = None,
        *, ack_wait: float = 30.0, max_ack_pending: int = 20_000,
    ) -> MemoryConsumer:
        """Delete `durable` (what it held unacked is delivered anew) and create it again,
        delivering `subject` (or several) from `start_seq` or from its oldest message."""
        await self.delete_consumer(stream, durable)
        subjects = (subject,) if isinstance(subject, str) else tuple(subject)
        consumer = MemoryConsumer(self, self._named(stream), subjects, start_seq, ack_wait,
                                  max_ack_pending)
        self.consumers[(stream, durable)] = consumer
        return consumer

    async def delete_consumer(self, stream: str, durable: str) -> None:
        old = self.consumers.pop((stream, durable), None)
        if old is not None:
            old.live = False
