"""Run one batch of records through one stage: the semantics shared by the runner and by
wallaroo.testing. Pure: no I/O, no clock. State lives in a table of pickled bytes, so a
failed attempt leaves the committed state untouched and a batch can simply be re-run."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, NamedTuple

from wallaroo import codec
from wallaroo.api import StepSpec
from wallaroo.plan import Application, Stage

log = logging.getLogger("wallaroo.engine")
PARTITION_CACHE = 100_000
RecordId = tuple[int, int]  # (input message sequence, index of the record in that message)


class Item(NamedTuple):
    """One record entering a stage: raw bytes for a source stage, else a keyed value.
    (A NamedTuple: the runner makes one per record, and a tuple is cheap to make.)"""

    rid: RecordId
    key: str | None
    value: Any


@dataclass
class Batch:
    """Records entering a stage, column-wise, so the runner builds it from input messages
    without making an object per record. `origins` lists (input message seq, record count)."""

    keys: list[str | None] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    origins: list[tuple[int, int]] = field(default_factory=list)

    def add(self, seq: int, keys: list[str | None], values: list[Any]) -> None:
        self.keys += keys
        self.values += values
        self.origins.append((seq, len(values)))

    @classmethod
    def of(cls, items: Sequence[Item]) -> Batch:
        batch = cls()
        for seq, group in groupby(items, key=lambda it: it.rid[0]):
            its = list(group)
            batch.add(seq, [it.key for it in its], [it.value for it in its])
        return batch

    def items(self) -> list[Item]:
        rids = [(seq, i) for seq, n in self.origins for i in range(n)]
        return [Item(r, k, v) for r, k, v in zip(rids, self.keys, self.values, strict=True)]

    def __len__(self) -> int:
        return len(self.values)


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
    """routed: target partition -> (keys, values); sink_out: sink -> encoded outputs (an
    encoder may return str: it is sent as UTF-8)."""

    routed: dict[int, tuple[list[str], list[Any]]] = field(default_factory=dict)
    sink_out: dict[int, list[bytes | str]] = field(default_factory=dict)
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
    return state_slot_of(step.name, key)


def state_slot_of(step_name: str, key: str | None) -> str:
    return f"{step_name}\x1f{key or ''}"


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
        self._partition: dict[str, int] = {}

    def attempt(
        self, batch: Batch | Sequence[Item], table: Mapping[str, bytes],
        skip: Mapping[RecordId, DeadLetter],
    ) -> BatchResult:
        """Process `batch` against committed state `table`; raise RecordFailed on the first
        failing record. Records in `skip` are dead-lettered instead of processed."""
        if not isinstance(batch, Batch):
            batch = Batch.of(batch)
        if not skip:
            try:
                return self._fast(batch, table)
            except Exception:  # re-run record by record: that finds and names the culprit
                log.debug("batch failed on the fast path; locating the failing record")
        return self._slow(batch.items(), table, skip)

    def _fast(self, batch: Batch, table: Mapping[str, bytes]) -> BatchResult:
        """The whole batch one step at a time: the per-record overhead is a list comprehension.
        Any exception voids the attempt (state lives in `work`, the table is untouched)."""
        result = BatchResult(records_in=len(batch))
        keys, vals = batch.keys, batch.values
        if self.decode is not None:
            decode = self.decode
            vals = [decode(v) for v in vals]
        work: dict[str, dict[str | None, Any]] = {}
        for step in self.steps:
            keys, vals = self._fast_step(step, keys, vals, table, work.setdefault(step.name, {}))
        self._emit(vals, result)
        result.states = {state_slot_of(name, k): codec.dumps(obj)
                         for name, objs in work.items() for k, obj in objs.items()}
        return result

    def _fast_step(
        self, step: StepSpec, keys: list[str | None], vals: list[Any],
        table: Mapping[str, bytes], work: dict[str | None, Any],
    ) -> tuple[list[str | None], list[Any]]:
        fn = step.fn
        if step.state is None:
            outs = [fn(v) for v in vals]
        else:
            outs = []
            for k, v in zip(keys, vals, strict=True):
                state = work.get(k)
                if state is None:
                    state = work[k] = _load_state(step, k, table)
                outs.append(fn(v, state))
        if step.kind in ("computation", "state_computation"):
            if any(o is None for o in outs):
                keep = [(k, o) for k, o in zip(keys, outs, strict=True) if o is not None]
                return [k for k, _ in keep], [o for _, o in keep]
            return keys, outs
        fanned = [(k, x) for k, o in zip(keys, outs, strict=True) if o is not None
                  for x in _as_list(step, o) if x is not None]
        return [k for k, _ in fanned], [x for _, x in fanned]

    def _slow(
        self, items: Sequence[Item], table: Mapping[str, bytes], skip: Mapping[RecordId, DeadLetter]
    ) -> BatchResult:
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
            self._route(values, result.routed)
        for i, enc in self.encoders:
            outs = [enc(v) for v in values]
            if not all(type(o) is bytes or type(o) is str for o in outs):
                outs = [_as_bytes(o) for o in outs]
            result.sink_out.setdefault(i, []).extend(outs)

    def _route(self, values: list[Any], routed: dict[int, tuple[list[str], list[Any]]]) -> None:
        extract = self.extract
        keys = [extract(v) for v in values] if extract else [""] * len(values)
        if not all(type(k) is str for k in keys):
            keys = [_as_key(k) for k in keys]
        part = self._partition
        for k, v in zip(keys, values, strict=True):
            p = part.get(k)
            if p is None:
                p = self._new_partition(k)
            dest = routed.get(p)
            if dest is None:
                dest = routed[p] = ([], [])
            dest[0].append(k)
            dest[1].append(v)

    def _new_partition(self, key: str) -> int:
        # Why a cache: crc32 of an encoded key costs more than a dict hit, and hot keys repeat.
        if len(self._partition) >= PARTITION_CACHE:
            self._partition.clear()
        p = self._partition[key] = codec.partition_of(key, self.target_partitions)
        return p


def _state(step: StepSpec, key: str | None, table: Mapping[str, bytes], work: dict[str, Any]) -> Any:
    slot = state_slot(step, key)
    state = work.get(slot)
    if state is None:
        state = work[slot] = _load_state(step, key, table)
    return state


def _load_state(step: StepSpec, key: str | None, table: Mapping[str, bytes]) -> Any:
    blob = table.get(state_slot(step, key))
    return codec.loads(blob) if blob is not None else _new_state(step)


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
