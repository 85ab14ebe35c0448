"""Run one batch of records through one stage: the semantics shared by the runner and by
wallaroo.testing. Pure: no I/O, no clock. State lives in a table of pickled bytes, so a
failed attempt leaves the committed state untouched and a batch can simply be re-run."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wallaroo import codec
from wallaroo.api import StepSpec
from wallaroo.plan import Application, Stage

RecordId = tuple[int, int]  # (input message sequence, index of the record in that message)


@dataclass(frozen=True)
class Item:
    """One record entering a stage: raw bytes for a source stage, else a keyed value."""

    rid: RecordId
    key: str | None
    value: Any


@dataclass(frozen=True)
class DeadLetter:
    stage: str
    step: str
    reason: str
    error: str
    traceback: str
    attempts: int
    key: str | None
    payload: bytes
    rid: RecordId

    def to_wire(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "step": self.step, "reason": self.reason, "error": self.error,
            "traceback": self.traceback, "attempts": self.attempts, "key": self.key,
            "payload": self.payload, "rid": list(self.rid),
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> DeadLetter:
        return cls(
            stage=d["stage"], step=d["step"], reason=d["reason"], error=d["error"],
            traceback=d["traceback"], attempts=d["attempts"], key=d["key"],
            payload=d["payload"], rid=(d["rid"][0], d["rid"][1]),
        )


@dataclass
class BatchResult:
    routed: dict[int, list[tuple[str, Any]]] = field(default_factory=dict)
    sink_out: dict[int, list[bytes]] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    records_in: int = 0


class RecordFailed(Exception):  # noqa: N818 - a signal between engine and caller
    """A record failed in user code (or decoding): the attempt is void, retry or dead-letter."""

    def __init__(self, item: Item, step: str, reason: str, exc: BaseException) -> None:
        self.item, self.step, self.reason = item, step, reason
        self.error = f"{type(exc).__name__}: {exc}"
        self.tb = "".join(traceback.format_exception(exc))
        super().__init__(f"step {step!r} failed on record {item.rid}: {self.error}")

    def dead_letter(self, stage: str, attempts: int) -> DeadLetter:
        item = self.item
        payload = item.value if isinstance(item.value, bytes) else codec.dumps(item.value)
        return DeadLetter(stage, self.step, self.reason, self.error, self.tb, attempts,
                          item.key, payload, item.rid)


def state_slot(step: StepSpec, key: str | None) -> str:
    """State table key: state is per (step, record key)."""
    return f"{step.name}\x1f{key or ''}"


class StageEngine:
    """Executes `stage` of `app` on batches of Items."""

    def __init__(self, app: Application, stage: Stage) -> None:
        self.stage = stage
        self.decode = stage.decoder.fn if stage.decoder else None
        self.steps = stage.steps
        self.route = stage.route
        self.extract = stage.route.extractor.fn if stage.route and stage.route.extractor else None
        self.target_partitions = app.stages[stage.route.target].partitions if stage.route else 1
        self.encoders = [(i, app.sinks[i].encoder_spec().fn) for i in stage.sinks]

    def attempt(
        self, items: Sequence[Item], table: Mapping[str, bytes], skip: Mapping[RecordId, DeadLetter]
    ) -> BatchResult:
        """Process `items` against committed state `table`; raise RecordFailed on the first
        failing record. Records in `skip` are dead-lettered instead of processed."""
        result = BatchResult(records_in=len(items))
        work: dict[str, Any] = {}
        for item in items:
            dead = skip.get(item.rid)
            if dead is not None:
                result.dead.append(dead)
                continue
            self._run_record(item, table, work, result)
        result.states = {slot: codec.dumps(obj) for slot, obj in work.items()}
        return result

    def _run_record(
        self, item: Item, table: Mapping[str, bytes], work: dict[str, Any], result: BatchResult
    ) -> None:
        where, reason = "decoder", "decode_error"
        try:
            values = [self.decode(item.value)] if self.decode else [item.value]
            reason = "user_error"
            for step in self.steps:
                where = step.name
                values = self._step(step, values, item.key, table, work)
            where, reason = "output", "output_error"
            self._emit(values, result)
        except Exception as exc:
            raise RecordFailed(item, where, reason, exc) from exc

    def _step(
        self, step: StepSpec, values: list[Any], key: str | None,
        table: Mapping[str, bytes], work: dict[str, Any],
    ) -> list[Any]:
        if not values:
            return values
        fn = step.fn
        if step.state is None:
            outs = [fn(v) for v in values]
        else:
            state = _state(step, key, table, work)
            outs = [fn(v, state) for v in values]
        if not step.multi:
            return [o for o in outs if o is not None]
        return [x for o in outs if o is not None for x in _as_list(step, o) if x is not None]

    def _emit(self, values: list[Any], result: BatchResult) -> None:
        if self.route is not None:
            n, extract = self.target_partitions, self.extract
            for v in values:
                key = _as_key(extract(v)) if extract else ""
                result.routed.setdefault(codec.partition_of(key, n), []).append((key, v))
        staged = [(i, [_as_bytes(enc(v)) for v in values]) for i, enc in self.encoders]
        for i, outs in staged:
            result.sink_out.setdefault(i, []).extend(outs)


def _state(step: StepSpec, key: str | None, table: Mapping[str, bytes], work: dict[str, Any]) -> Any:
    slot = state_slot(step, key)
    state = work.get(slot)
    if state is None:
        blob = table.get(slot)
        state = codec.loads(blob) if blob is not None else _new_state(step)
        work[slot] = state
    return state


def _new_state(step: StepSpec) -> Any:
    factory: Callable[[], Any] | None = step.state
    assert factory is not None
    return factory()


def _as_list(step: StepSpec, out: Any) -> list[Any]:
    if isinstance(out, list | tuple):
        return list(out)
    msg = f"{step.kind} {step.name!r} must return a list, got {type(out).__name__}"
    raise TypeError(msg)


def _as_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "surrogateescape")
    msg = f"key_extractor must return str (or bytes), got {type(key).__name__}: return str(...)"
    raise TypeError(msg)


def _as_bytes(out: Any) -> bytes:
    if isinstance(out, bytes):
        return out
    if isinstance(out, str):
        return out.encode("utf-8")
    msg = f"encoder must return bytes or str, got {type(out).__name__}"
    raise TypeError(msg)


@dataclass(frozen=True)
class RetryPolicy:
    """A failing record is tried `attempts` times in all, waiting `backoff * factor**n`
    (at most `max_delay`) between tries, then dead-lettered."""

    attempts: int = 3
    backoff: float = 0.05
    factor: float = 4.0
    max_delay: float = 2.0


class Retrier:
    """Counts failures per record across attempts of one batch; pure, the caller sleeps."""

    def __init__(self, policy: RetryPolicy, stage: str) -> None:
        self.policy, self.stage = policy, stage
        self.failures: dict[RecordId, int] = {}
        self.dead: dict[RecordId, DeadLetter] = {}

    def on_failure(self, failed: RecordFailed) -> float:
        """Seconds to wait before the next attempt (0 once the record is dead-lettered)."""
        rid = failed.item.rid
        n = self.failures[rid] = self.failures.get(rid, 0) + 1
        if n >= self.policy.attempts:
            self.dead[rid] = failed.dead_letter(self.stage, n)
            return 0.0
        return float(min(self.policy.backoff * self.policy.factor ** (n - 1), self.policy.max_delay))
