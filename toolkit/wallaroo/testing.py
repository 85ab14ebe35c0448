"""Run an application in-process over a list of inputs, on the runners' own commit loop: every
(stage, partition) is a real `PartitionWorker` on an in-memory JetStream (`MemoryNats`); records
travel between stages through the data stream's subjects, outputs are read from the output
stream and dead letters from the dead-letter stream. What passes here is what runners do.

    >>> result = wallaroo.testing.run(app, ["hello world"])
    >>> result.lines("counts")
    ['hello => 1', 'world => 1']

Crashes: `crash_after=N` (or several N) kills the whole process right after the Nth commit's
changelog append, before its outputs are published and its inputs acked (`crash_at` moves the
point: after the publish, or once the commit is complete). The streams survive, as JetStream
survives a SIGKILL, and fresh workers restore from the changelog; the outputs must not change:

    >>> assert testing.run(app, lines, crash_after=[3, 10]).lines() == testing.run(app, lines).lines()

Time: retry backoff waits on a `FakeClock` (`result.clock`), never really. Windows run on event
time read from the records, so no wall clock is involved there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from wallaroo.core import codec
from wallaroo.core.engine import RetryPolicy
from wallaroo.core.errors import UnknownNameError
from wallaroo.core.names import AppNames, eoi_msg_id, source_sender
from wallaroo.core.wire import DeadLetter, Part
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.nats.memory import MemoryNats
from wallaroo.nats.protocol import Consumer, Out
from wallaroo.plan import Application


@dataclass(frozen=True)
class Advance:
    """In a list of inputs: the fake clock moves `seconds` on, then idle partitions fire the
    micro-batches that became due (their `max_wait` passed)."""

    seconds: float


def advance(seconds: float) -> Advance:
    """`testing.run(app, ["a", "b", testing.advance(5), "c"])`: 5 s pass after "b"."""
    return Advance(float(seconds))


Inputs = (Sequence[bytes | str | Advance] | Mapping[str, Sequence[bytes | str]]
          | Sequence[tuple[str, bytes | str] | Advance])
CrashPoint = Literal["append", "publish", "commit"]
VERSION = "testing"
PAYLOAD_MARGIN = 1024  # as `wallaroo send`: headers and framing on top of a batch


@dataclass
class FakeClock:
    """Time that only moves when the code under test waits (retry backoff) or a test says."""

    now: float = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """What the workers await instead of asyncio.sleep: the clock moves, nobody waits."""
        self.advance(seconds)


@dataclass
class RunResult:
    """What reached the sinks and the dead-letter stream. `states`: each (stage, partition)'s
    state table at the end; `commits`: changelog appends in all (what `crash_after` counts);
    `crashes`: how many of the asked-for crashes happened (one past the last commit cannot)."""

    app: Application
    outputs: dict[str, list[bytes]]
    dead_letters: list[DeadLetter]
    clock: FakeClock
    states: dict[Part, dict[str, bytes]] = field(default_factory=dict)
    commits: int = 0
    crashes: int = 0

    def raw(self, sink: str | None = None) -> list[bytes]:
        """Encoded outputs of `sink` (the only sink if omitted), in emission order."""
        return self.outputs[self._sink(sink)]

    def lines(self, sink: str | None = None) -> list[str]:
        """Outputs of `sink` as text, one per output, without a trailing newline."""
        return [b.decode("utf-8").removesuffix("\n") for b in self.raw(sink)]

    def _sink(self, sink: str | None) -> str:
        names = [s.name for s in self.app.sinks]
        if sink is None:
            if len(names) == 1:
                return names[0]
            msg = f"the app has several sinks ({', '.join(names)}): name one"
            raise ValueError(msg)
        if sink not in names:
            raise UnknownNameError(kind="sink", name=sink, known=names)
        return sink


def run(
    app: Application,
    inputs: Inputs,
    *,
    batch_size: int = 1,
    retry: RetryPolicy | None = None,
    crash_after: int | Iterable[int] = (),
    crash_at: CrashPoint = "append",
    end_of_input: bool = False,
) -> RunResult:
    """Feed `inputs` to `app` and return what reached its sinks.

    `inputs` is a list of records for an app with one source, a dict {source name: records},
    or a list of (source name, record) pairs to interleave sources in a chosen order. Records
    are bytes (or str, sent as UTF-8), as the app's decoders receive them; `batch_size` of them
    travel in one message, and each message is processed to the end before the next is sent.

    `crash_after`: crash after the Nth commit (counted over all partitions), for each N given;
    `crash_at`: "append" (the commit is in the changelog, nothing published or acked),
    "publish" (outputs published, inputs not acked) or "commit" (complete).

    `end_of_input`: then every source ends, as a job's bounded sources do: what steps hold
    back (open windows) is emitted."""
    return asyncio.run(run_async(app, inputs, batch_size=batch_size, retry=retry,
                                 crash_after=crash_after, crash_at=crash_at,
                                 end_of_input=end_of_input))


async def run_async(
    app: Application,
    inputs: Inputs,
    *,
    batch_size: int = 1,
    retry: RetryPolicy | None = None,
    crash_after: int | Iterable[int] = (),
    crash_at: CrashPoint = "append",
    end_of_input: bool = False,
) -> RunResult:
    """`run`, for a caller already inside an event loop."""
    feed = _feed(app, inputs)
    clock = FakeClock()
    nats = MemoryNats(clock=clock.time)
    crashes = _Crashes(_crash_points(crash_after), crash_at)
    crashes.install(nats)
    process = _Process(app, nats, retry or RetryPolicy(), clock)
    await process.create_streams()
    await process.start()
    for segment in _segments(feed):
        if isinstance(segment, Advance):
            clock.advance(segment.seconds)
            await process.idle()
        else:
            for chunk in _chunks(segment, batch_size):
                await process.send(chunk)
                await process.drain()
    if end_of_input:
        await process.end_input()
        await process.drain()
    while crashes.idle_crash_due():  # crashes after the last commit: restore once more
        await process.start()
        await process.drain()
    return process.result(crashes)


class _Crash(Exception):  # noqa: N818 - not an error: the simulated process dies here
    pass


@dataclass
class _Crashes:
    """Raises _Crash from MemoryNats' hooks at the asked-for commits."""

    at: list[int]  # commit numbers still to crash after, ascending
    point: CrashPoint
    appends: int = 0
    happened: int = 0
    armed: bool = False  # "publish": the commit is appended, crash once it is published

    def install(self, nats: MemoryNats) -> None:
        nats.before_append, nats.after_append = self.before_append, self.after_append
        nats.after_publish = self.after_publish

    def before_append(self, subject: str) -> None:
        # Why here: the next append is the first thing after commit N that leaves a trace.
        if self.point == "commit" and self._due():
            self._crash()

    def after_append(self, subject: str, seq: int) -> None:
        self.appends += 1
        if self.point == "append" and self._due():
            self._crash()
        self.armed = self.point == "publish" and self._due()

    def after_publish(self, outs: Sequence[Out]) -> None:
        if self.armed:
            self.armed = False
            self._crash()

    def idle_crash_due(self) -> bool:
        """A "commit" crash after the last commit happens once the input is all processed."""
        if self.point != "commit" or not self._due():
            return False
        self.at.pop(0)
        self.happened += 1
        return True

    def _due(self) -> bool:
        return bool(self.at) and self.at[0] <= self.appends

    def _crash(self) -> None:
        self.at.pop(0)
        self.happened += 1
        raise _Crash


def _crash_points(crash_after: int | Iterable[int]) -> list[int]:
    points = sorted({crash_after} if isinstance(crash_after, int) else set(crash_after))
    if points and points[0] < 1:
        msg = f"crash_after counts commits from 1, got {points[0]}"
        raise ValueError(msg)
    return points


class _Process:
    """One simulated runner owning every (stage, partition): its workers live in memory until
    a crash; the streams (MemoryNats) outlive it, as JetStream outlives a killed runner."""

    def __init__(self, app: Application, nats: MemoryNats, retry: RetryPolicy, clock: FakeClock) -> None:
        self.app, self.nats, self.clock = app, nats, clock
        self.names = AppNames(app.slug)
        # Why no time budget: commits are grouped by record count alone, so a crash_after N
        # lands on the same commit on every run, however slow the machine.
        self.cfg = WorkerConfig(fetch_timeout=0.0, target_commit_seconds=1e9, retry=retry)
        self.workers: dict[Part, tuple[PartitionWorker, Consumer]] = {}
        self.sent: dict[str, int] = {}  # source -> messages sent to it

    async def create_streams(self) -> None:
        for stream, (subjects, work_queue) in self.names.streams().items():
            await self.nats.ensure_stream(stream, subjects, work_queue=work_queue)

    async def start(self) -> None:
        """Fresh workers for every partition, each restored from its changelog."""
        self.workers = {}
        for stage in self.app.stages:
            for part in range(stage.partitions):
                worker = PartitionWorker(self.nats, self.app, VERSION, stage, part, self.cfg,
                                         sleep=self.clock.sleep, clock=self.clock.time)
                await worker.restore()
                self.workers[(stage.index, part)] = (worker, await worker.open_consumer())

    async def send(self, chunk: list[tuple[str, bytes]]) -> None:
        """The chunk's records into their sources' data subjects, one message per source, with
        ids that never repeat (like `wallaroo send`: partitions taken in turn)."""
        by_source: dict[str, list[bytes]] = {}
        for source, raw in chunk:
            by_source.setdefault(source, []).append(raw)
        for source, records in by_source.items():
            stage = self.app.sources[source]
            n = self.sent[source] = self.sent.get(source, 0) + 1
            subject = self.names.source(stage.index, (n - 1) % stage.partitions)
            for k, payload in enumerate(_fit(records, self.nats.max_payload - PAYLOAD_MARGIN)):
                await self.nats.publish(subject, payload, f"i:testing.{source}:{n}.{k}")

    async def end_input(self) -> None:
        """Every source ends: an end-of-input message on each partition of its stage."""
        for source, stage in self.app.sources.items():
            for part in range(stage.partitions):
                await self.nats.publish(self.names.control(stage.index, part), b"",
                                        eoi_msg_id(source_sender(source), stage.index, part))

    async def idle(self) -> None:
        """Every partition polls once with no input (it may publish a micro-batch timer), then
        what that brought is processed."""
        for part in sorted(self.workers):
            worker, consumer = self.workers[part]
            try:
                self.workers[part] = (worker, await worker.poll(consumer))
            except _Crash:
                await self.start()
        await self.drain()

    async def drain(self) -> None:
        """Poll the first partition (upstream first) with input waiting, until none has."""
        while (part := self._ready()) is not None:
            try:
                await self._poll(part)
            except _Crash:
                await self.start()

    def _ready(self) -> Part | None:
        stream = self.names.data_stream
        return next((p for p in sorted(self.workers)
                     if self._waiting(stream, self.workers[p][0])), None)

    async def _poll(self, part: Part) -> None:
        worker, consumer = self.workers[part]
        delivered = worker.consumer_seq
        after = await worker.poll(consumer)
        self.workers[part] = (worker, after)
        # Why not count the waiting messages: a poll may also publish a timer into them.
        if after is consumer and worker.consumer_seq == delivered:
            waiting = self._waiting(self.names.data_stream, worker)
            msg = f"{worker.in_subject}: {waiting} message(s) waiting, but the worker took none"
            raise RuntimeError(msg)

    def _waiting(self, stream: str, worker: PartitionWorker) -> int:
        """Messages waiting for `worker`: records and its control messages (ends, timers)."""
        return sum(self.nats.count(stream, subject) for subject in worker.subjects)

    def result(self, crashes: _Crashes) -> RunResult:
        outputs = {sink.name: [r for m in self.nats.messages(self.names.out_stream, self.names.out(sink.name))
                               for r in codec.unpack_batch(m.data)]
                   for sink in self.app.sinks}
        dead = [DeadLetter.from_wire(m.data, m.seq) for m in self.nats.messages(self.names.dlq_stream)]
        states = {part: dict(w.state.table) for part, (w, _) in self.workers.items()}
        return RunResult(self.app, outputs, dead, self.clock, states, crashes.appends, crashes.happened)


def _fit(records: list[bytes], limit: int) -> list[bytes]:
    """`records` packed into as few messages of at most `limit` bytes as halving gives (one
    record too large for a message is left to fail its publish, naming its size)."""
    payload = codec.pack_batch(records)
    if len(payload) <= limit or len(records) == 1:
        return [payload]
    half = len(records) // 2
    return _fit(records[:half], limit) + _fit(records[half:], limit)


Fed = list[tuple[str, bytes] | Advance]


def _feed(app: Application, inputs: Inputs) -> Fed:
    sources = list(app.sources)
    records = [x for x in inputs if not isinstance(x, Advance)]
    if isinstance(inputs, Mapping):
        pairs: Iterable[Any] = [(s, r) for s, recs in inputs.items() for r in recs]
    elif records and all(isinstance(x, tuple) for x in records):
        pairs = inputs
    elif len(sources) == 1:
        pairs = [x if isinstance(x, Advance) else (sources[0], x) for x in inputs]
    else:
        msg = (f"the app has several sources ({', '.join(sources)}): pass a dict "
               "{source: records} or (source, record) pairs")
        raise ValueError(msg)
    out: Fed = []
    for item in pairs:
        if isinstance(item, Advance):
            out.append(item)
            continue
        source, rec = item
        if source not in app.sources:
            raise UnknownNameError(kind="source", name=source, known=sources)
        out.append((source, rec.encode("utf-8") if isinstance(rec, str) else bytes(rec)))
    return out


def _segments(fed: Fed) -> Iterable[list[tuple[str, bytes]] | Advance]:
    """Runs of records between clock advances, and the advances."""
    run: list[tuple[str, bytes]] = []
    for item in fed:
        if isinstance(item, Advance):
            if run:
                yield run
            run = []
            yield item
        else:
            run.append(item)
    if run:
        yield run


def _chunks(items: list[tuple[str, bytes]], size: int) -> Iterable[list[tuple[str, bytes]]]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield items[i : i + size]
