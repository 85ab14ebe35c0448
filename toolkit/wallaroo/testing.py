"""Run an application in-process over a list of inputs, with the runner's semantics (the same
stage engine, batching, retries and dead letters) and no NATS, so pipelines are unit-testable.

    >>> result = wallaroo.testing.run(app, ["hello world"])
    >>> result.lines("counts")
    ['hello => 1', 'world => 1']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wallaroo.core.engine import (
    BatchResult,
    Item,
    RecordFailed,
    Retrier,
    RetryPolicy,
    StageEngine,
)
from wallaroo.core.errors import UnknownNameError
from wallaroo.core.wire import DeadLetter
from wallaroo.plan import Application

Inputs = Sequence[bytes | str] | Mapping[str, Sequence[bytes | str]] | Sequence[tuple[str, bytes | str]]


@dataclass
class FakeClock:
    """Time that only moves when the code under test waits (retry backoff)."""

    now: float = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RunResult:
    app: Application
    outputs: dict[str, list[bytes]]
    dead_letters: list[DeadLetter]
    clock: FakeClock
    states: dict[tuple[int, int], dict[str, bytes]] = field(default_factory=dict)

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
) -> RunResult:
    """Feed `inputs` to `app` and return what reached its sinks.

    `inputs` is a list of records for an app with one source, a dict {source name: records},
    or a list of (source name, record) pairs to interleave sources in a chosen order. Records
    are bytes (or str, sent as UTF-8), as the app's decoders receive them."""
    harness = _Harness(app, retry or RetryPolicy())
    for chunk in _chunks(_feed(app, inputs), batch_size):
        for source, raw in chunk:
            harness.enqueue_source(source, raw)
        harness.drain(batch_size)
    return RunResult(app, harness.outputs, harness.dead, harness.clock, harness.tables)


class _Harness:
    def __init__(self, app: Application, retry: RetryPolicy) -> None:
        self.app, self.retry = app, retry
        self.engines = [StageEngine(app, s) for s in app.stages]
        self.queues: dict[tuple[int, int], deque[Item]] = {}
        self.tables: dict[tuple[int, int], dict[str, bytes]] = {}
        self.outputs: dict[str, list[bytes]] = {s.name: [] for s in app.sinks}
        self.dead: list[DeadLetter] = []
        self.clock = FakeClock()
        self.seq = 0

    def enqueue_source(self, source: str, raw: bytes) -> None:
        stage = self.app.sources[source]
        self.seq += 1
        part = self.seq % stage.partitions
        self.queues.setdefault((stage.index, part), deque()).append(Item((self.seq, 0), None, raw))

    def drain(self, batch_size: int) -> None:
        while True:
            ready = sorted(k for k, q in self.queues.items() if q)
            if not ready:
                return
            queue = self.queues[ready[0]]
            batch = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
            self._apply(ready[0], self._process(ready[0], batch))

    def _process(self, where: tuple[int, int], batch: list[Item]) -> BatchResult:
        engine = self.engines[where[0]]
        retrier = Retrier(self.retry, engine.stage.name)
        table = self.tables.setdefault(where, {})
        while True:
            try:
                return engine.attempt(batch, table, retrier.dead)
            except RecordFailed as failed:
                self.clock.advance(retrier.on_failure(failed))

    def _apply(self, where: tuple[int, int], result: BatchResult) -> None:
        stage = self.app.stages[where[0]]
        self.tables[where].update(result.states)
        self.dead.extend(result.dead)
        for part, (keys, values) in result.routed.items():
            assert stage.route is not None
            queue = self.queues.setdefault((stage.route.target, part), deque())
            for key, value in zip(keys, values, strict=True):
                self.seq += 1
                queue.append(Item((self.seq, 0), key, value))
        for sink, outs in result.sink_out.items():
            self.outputs[self.app.sinks[sink].name].extend(
                o.encode("utf-8") if isinstance(o, str) else o for o in outs)


def _feed(app: Application, inputs: Inputs) -> list[tuple[str, bytes]]:
    sources = list(app.sources)
    if isinstance(inputs, Mapping):
        pairs: Iterable[tuple[str, Any]] = [(s, r) for s, recs in inputs.items() for r in recs]
    elif inputs and all(isinstance(x, tuple) for x in inputs):
        pairs = inputs  # type: ignore[assignment]
    elif len(sources) == 1:
        pairs = [(sources[0], r) for r in inputs]
    else:
        msg = (f"the app has several sources ({', '.join(sources)}): pass a dict "
               "{source: records} or (source, record) pairs")
        raise ValueError(msg)
    out = []
    for source, rec in pairs:
        if source not in app.sources:
            raise UnknownNameError(kind="source", name=source, known=sources)
        out.append((source, rec.encode("utf-8") if isinstance(rec, str) else bytes(rec)))
    return out


def _chunks(items: list[tuple[str, bytes]], size: int) -> Iterable[list[tuple[str, bytes]]]:
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]
