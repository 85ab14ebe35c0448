"""Keyed windows of the Wallaroo 0.6 API, built on keyed state (so they are exactly-once like
any state computation: a window's accumulator is committed with the batch that changed it).

    class Total(wl.Aggregation):
        def initial_accumulator(self): return 0
        def update(self, record, total): return total + record.amount
        def combine(self, a, b): return a + b
        def output(self, key, total): return f"{key}: {total}"

    pipeline.key_by(user).to(wl.count_windows(100).over(Total))
    pipeline.key_by(user).to(wl.range_windows(wl.seconds(60)).with_slide(wl.seconds(10))
                             .with_delay(wl.seconds(5)).with_timestamp(event_time).over(Total))

Range windows run on event time, which `with_timestamp(fn)` reads from each record (seconds):
results then depend only on the data, not on when it was processed or replayed. A window
[start, start + length) is emitted once the key's watermark (its newest timestamp minus the
delay) reaches its end. A record too late for every window that holds it is dead-lettered
(reason user_error, error LateRecord) rather than dropped: raise the delay if that happens
often. A record still in time for some of its sliding windows counts in those only (as in
Flink: a window, once emitted, does not change).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from wallaroo.api import Lift, Partial, StepSpec, _attach
from wallaroo.core import codec
from wallaroo.core.errors import DefinitionError, Reject


class Aggregation:
    """Subclass it and implement all four methods. `update` and `combine` may mutate and
    return their accumulator; `output` returning None emits nothing for that window."""

    def initial_accumulator(self) -> Any:
        raise NotImplementedError

    def update(self, record: Any, accumulator: Any) -> Any:
        raise NotImplementedError

    def combine(self, accumulator1: Any, accumulator2: Any) -> Any:
        raise NotImplementedError

    def output(self, key: str, accumulator: Any) -> Any:
        raise NotImplementedError


class LateRecord(Reject):
    """A record arrived after every window it belongs to was emitted."""


def milliseconds(n: float) -> float:
    return n / 1000.0


def seconds(n: float) -> float:
    return float(n)


def minutes(n: float) -> float:
    return n * 60.0


def _aggregation(agg: object) -> Aggregation:
    """An instance from `over()`'s argument: an Aggregation subclass or instance."""
    inst = agg() if isinstance(agg, type) and issubclass(agg, Aggregation) else agg
    if not isinstance(inst, Aggregation):
        msg = (f"over() takes a wallaroo.Aggregation subclass (or instance) with "
               f"initial_accumulator/update/combine/output, got {agg!r}")
        raise DefinitionError(msg)
    return inst


def _window_step(name: str, fn: Callable[..., Any], state: Callable[[], Any],
                 flush: Callable[[Any, str | None], list[Any]], **more: Any) -> Callable[..., Any]:
    return _attach(fn, StepSpec(kind="state_computation_multi", name=name, fn=fn, state=state,
                                with_key=True, flush=flush, **more))


# --- count windows ---------------------------------------------------------------------------


@dataclass
class _Counted:
    """Per key: the open window's accumulator and how many records it holds."""

    acc: Any = None
    count: int = 0


@dataclass(frozen=True)
class CountWindows:
    size: int

    def over(self, agg: object, name: str | None = None) -> Callable[..., Any]:
        inst = _aggregation(agg)
        size = self.size

        def count_window(record: Any, st: _Counted, key: str) -> list[Any]:
            acc = st.acc if st.count else inst.initial_accumulator()
            st.acc, st.count = inst.update(record, acc), st.count + 1
            if st.count < size:
                return []
            out, st.acc, st.count = inst.output(key, st.acc), None, 0
            return [out]

        def flush(st: _Counted, key: Any) -> list[Any]:
            """End of input: the partial window is emitted (it would wait forever)."""
            if not st.count:
                return []
            out, st.acc, st.count = inst.output(key, st.acc), None, 0
            return [] if out is None else [out]

        return _window_step(name or f"count_windows({size}) over {type(inst).__name__}",
                            count_window, _Counted, flush)


def count_windows(size: int) -> CountWindows:
    """Per key, one output for every `size` records (the last, partial window waits)."""
    if not isinstance(size, int) or size < 1:
        msg = f"count_windows(size) needs a whole number of records >= 1, got {size!r}"
        raise DefinitionError(msg)
    return CountWindows(size)


# --- one window over the whole input --------------------------------------------------------


@dataclass(frozen=True)
class GlobalWindows:
    def over(self, agg: object, name: str | None = None) -> Callable[..., Any]:
        inst = _aggregation(agg)

        def global_window(record: Any, st: _Counted, key: str) -> list[Any]:
            if type(record) is Partial:  # records combined ahead of the shuffle (Lift)
                acc = inst.combine(st.acc, record.acc) if st.count else record.acc
                # The state is never the partial itself (a key's first, or what a combine
                # returned): a later combine may change it in place, and a batch that runs
                # again (after a retry or a split) reuses its values.
                st.acc = codec.loads(codec.dumps(acc)) if acc is record.acc else acc
            else:
                acc = st.acc if st.count else inst.initial_accumulator()
                st.acc = inst.update(record, acc)
            st.count += 1
            return []

        def flush(st: _Counted, key: Any) -> list[Any]:
            if not st.count:
                return []
            out, st.acc, st.count = inst.output(key, st.acc), None, 0
            return [] if out is None else [out]

        # Why it can be lifted: the total does not depend on how records were batched (combine
        # is associative, as Aggregation asks), unlike a count window's boundaries.
        lift = Lift(inst.initial_accumulator, inst.update)
        return _window_step(name or f"global_windows over {type(inst).__name__}", global_window,
                            _Counted, flush, lift=lift, at_end_only=True)


def global_windows() -> GlobalWindows:
    """Per key, one window over the whole input of a job, emitted when input ends (Bytewax's
    reduce_final, Beam's Combine.perKey in the global window). Records are combined per key
    in the stage before the key_by, so only one accumulator per key and batch crosses it
    (when it is the first step after the key_by and the app's steps call no functions).
    Only in a job (every source bounded): an endless stream would never emit."""
    return GlobalWindows()


# --- range windows ---------------------------------------------------------------------------


@dataclass
class _Panes:
    """Per key: accumulators per pane (`slide` seconds, by pane index), the newest event
    time seen, and the start (pane index) of the oldest window not yet emitted."""

    panes: dict[int, Any] = field(default_factory=dict)
    newest: float = -math.inf
    next_window: int | None = None


@dataclass(frozen=True)
class RangeWindows:
    length: float
    slide: float | None = None
    delay: float = 0.0
    timestamp: Callable[[Any], float] | None = None

    def with_slide(self, slide: float) -> RangeWindows:
        return replace(self, slide=slide)

    def with_delay(self, delay: float) -> RangeWindows:
        return replace(self, delay=delay)

    def with_timestamp(self, fn: Callable[[Any], float]) -> RangeWindows:
        """Where a record's event time (seconds) comes from."""
        return replace(self, timestamp=fn)

    def over(self, agg: object, name: str | None = None) -> Callable[..., Any]:
        inst, (pane, per_window) = _aggregation(agg), self._geometry()
        if self.timestamp is None:
            msg = ("range_windows(...) runs on event time: add .with_timestamp(fn), fn(record) -> "
                   "seconds, before .over()")
            raise DefinitionError(msg)
        windows = _RangeLogic(inst, self.timestamp, pane, per_window, self.delay)

        def range_window(record: Any, st: _Panes, key: str) -> list[Any]:
            return windows.step(record, st, key)

        def flush(st: _Panes, key: str | None) -> list[Any]:
            return windows.flush(st, key)

        label = f"range_windows({self.length:g}s/{pane:g}s) over {type(inst).__name__}"
        return _window_step(name or label, range_window, _Panes, flush)

    def _geometry(self) -> tuple[float, int]:
        """(pane seconds, panes per window): windows slide by whole panes."""
        slide = self.length if self.slide is None else self.slide
        ratio = self.length / slide if slide > 0 else 0.0
        if self.length <= 0 or slide <= 0 or self.delay < 0 or abs(ratio - round(ratio)) > 1e-9:
            msg = (f"range_windows({self.length}).with_slide({slide}).with_delay({self.delay}): "
                   "length and slide must be > 0, length a whole multiple of slide, delay >= 0")
            raise DefinitionError(msg)
        return slide, round(ratio)


@dataclass(frozen=True)
class _RangeLogic:
    agg: Aggregation
    timestamp: Callable[[Any], float]
    pane: float
    per_window: int
    delay: float

    def step(self, record: Any, st: _Panes, key: str) -> list[Any]:
        t = float(self.timestamp(record))
        p = math.floor(t / self.pane)
        if st.next_window is None:  # a new key: every window the watermark has not passed is open
            st.next_window = self._first_open(t - self.delay)
        if p < st.next_window:  # the newest window holding pane p was emitted already
            msg = (f"event time {t} is later than the {self.delay}s delay allows: its windows were "
                   f"emitted (watermark {st.newest - self.delay}); raise .with_delay()")
            raise LateRecord(msg)
        acc = st.panes.get(p)
        st.panes[p] = self.agg.update(record, self.agg.initial_accumulator() if acc is None else acc)
        st.newest = max(st.newest, t)
        return self._emit_closed(st, key)

    def flush(self, st: _Panes, key: Any) -> list[Any]:
        """End of input: the watermark jumps past every pane, so every window that holds one
        is emitted, oldest first."""
        if not st.panes or st.next_window is None:
            return []
        return self._emit_closed(st, key, watermark=(max(st.panes) + self.per_window + 1) * self.pane)

    def _emit_closed(self, st: _Panes, key: Any, watermark: float | None = None) -> list[Any]:
        """Every window that ends at or before the watermark, oldest first."""
        assert st.next_window is not None
        watermark, outs = st.newest - self.delay if watermark is None else watermark, []
        first_open = self._first_open(watermark)
        while st.next_window < first_open:
            start = st.next_window
            held = [st.panes[i] for i in range(start, start + self.per_window) if i in st.panes]
            if held:
                out = self.agg.output(key, functools.reduce(self.agg.combine, held))
                if out is not None:
                    outs.append(out)
            st.panes.pop(start, None)  # no later window holds this pane
            # Why jump: windows before the oldest pane's first one are empty (a gap in event
            # time must not cost a loop per window), but never past an open window.
            oldest = min(st.panes, default=math.inf)
            st.next_window = int(max(start + 1, min(oldest - self.per_window + 1, first_open)))
        return outs

    def _first_open(self, watermark: float) -> int:
        """The oldest window (by its first pane) that ends after `watermark`."""
        return math.floor(watermark / self.pane) - self.per_window + 1


def range_windows(length: float) -> RangeWindows:
    """Per key, windows `length` seconds long (sliding with `.with_slide`), on event time."""
    return RangeWindows(float(length))
