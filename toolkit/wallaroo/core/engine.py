"""Run one batch of records through one stage: the semantics shared by the runner and by
wallaroo.testing. Pure: no I/O, no clock. State lives in a table of pickled bytes, so a
failed attempt leaves the committed state untouched and a batch can simply be re-run."""

from __future__ import annotations

import logging
import traceback
from bisect import bisect_right
from collections import ChainMap
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import accumulate, chain, count, repeat
from operator import is_
from typing import Any, NamedTuple, cast, overload

from wallaroo.api import Lift, Partial, StepSpec
from wallaroo.core import calls, codec
from wallaroo.core.errors import Reject
from wallaroo.core.wire import DeadLetter
from wallaroo.plan import Application, Stage

log = logging.getLogger("wallaroo.core.engine")
# When the input being processed was stored (JetStream's time of its newest message): what
# micro-batch steps stamp a batch's first record with, for its max_wait.
batch_time: ContextVar[float] = ContextVar("wallaroo_batch_time", default=0.0)
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
    without making an object per record. `origins` holds runs of records: (input message
    seq, index of the run's first record in that message, run length)."""

    keys: list[str | None] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    origins: list[tuple[int, int, int]] = field(default_factory=list)

    def add(self, seq: int, keys: list[str | None], values: list[Any], first: int = 0) -> None:
        self.keys += keys
        self.values += values
        self.origins.append((seq, first, len(values)))

    @classmethod
    def of(cls, items: Sequence[Item]) -> Batch:
        batch = cls()
        for it in items:
            batch.add(it.rid[0], [it.key], [it.value], it.rid[1])
        return batch

    def rids(self) -> list[RecordId]:
        return [(seq, first + i) for seq, first, n in self.origins for i in range(n)]

    def items(self) -> list[Item]:
        return [Item(r, k, v) for r, k, v in zip(self.rids(), self.keys, self.values, strict=True)]

    def item(self, index: int) -> Item:
        at = index
        for seq, first, n in self.origins:
            if at < n:
                return Item((seq, first + at), self.keys[index], self.values[index])
            at -= n
        raise IndexError(index)

    def without(self, skip: Mapping[RecordId, DeadLetter]) -> tuple[Batch, list[DeadLetter]]:
        """This batch minus the records in `skip`, and their dead letters."""
        kept, dead = Batch(), []
        for item in self.items():
            letter = skip.get(item.rid)
            if letter is None:
                kept.add(item.rid[0], [item.key], [item.value], item.rid[1])
            else:
                dead.append(letter)
        return kept, dead

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class BatchResult:
    """routed: target partition -> (keys, values); sink_out: sink -> encoded outputs (an
    encoder may return str: it is sent as UTF-8)."""

    routed: dict[int, tuple[list[str], list[Any]]] = field(default_factory=dict)
    sink_out: dict[int, list[bytes | str]] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    records_in: int = 0
    # state slot -> when its micro-batch is due (None: nothing waits), for the slots changed
    deadlines: dict[str, float | None] = field(default_factory=dict)


class RecordFailed(Exception):  # noqa: N818 - a signal between engine and caller
    """A record failed in user code (or decoding): the attempt is void, retry or dead-letter."""

    def __init__(self, item: Item, step: str, reason: str, exc: BaseException) -> None:
        self.item, self.step, self.reason = item, step, reason
        self.rejected = isinstance(exc, Reject)  # wrong, not unlucky: no retry
        self.error = f"{type(exc).__name__}: {exc}"
        self.tb = "".join(traceback.format_exception(exc))
        super().__init__(f"step {step!r} failed on record {item.rid}: {self.error}")

    def dead_letter(self, stage: str, attempts: int, raw: bool = False) -> DeadLetter:
        """`raw`: the record is as its source sent it (a source stage's), kept as its bytes;
        any other value is pickled, bytes too, as `dlq replay` hands it back to be unpickled."""
        item = self.item
        payload = letter_payload(item.value, raw)
        return DeadLetter(stage, self.step, self.reason, self.error, self.tb, attempts,
                          item.key, payload, item.rid)


def letter_payload(value: Any, raw: bool) -> bytes:
    """A dead letter's record: a source's raw bytes as they are, any other value pickled."""
    return value if raw and isinstance(value, bytes) else codec.dumps(value)


def state_slot(step: StepSpec, key: str | None) -> str:
    """State table key: state is per (step, record key)."""
    return state_slot_of(step.name, key)


def state_slot_of(step_name: str, key: str | None) -> str:
    return f"{step_name}\x1f{key or ''}"


class _StepFailed(Exception):  # noqa: N818 - internal signal, becomes RecordFailed
    def __init__(self, index: int, exc: BaseException, where: str | None = None) -> None:
        self.index, self.exc, self.where = index, exc, where


def _each(fn: Callable[..., Any], values: list[Any], *more: list[Any]) -> list[Any]:
    """[fn(v, *m) for v, *m in zip(values, *more)], but a failure says which value failed.
    Why extend(map(...)): the loop runs in C, and the outputs made before a failure stay in
    the list, so its length is the failing value's index."""
    outs: list[Any] = []
    try:
        outs.extend(map(fn, values, *more))
    except Exception as exc:
        raise _StepFailed(len(outs), exc) from exc
    return outs


def _has_none(values: list[Any]) -> bool:
    """Is any value None? (By identity: `None in values` would call user __eq__.)"""
    return any(map(is_, values, repeat(None)))


class StageEngine:
    """Executes `stage` of `app` on batches of records, one step at a time over the whole
    batch: the per-record overhead is a loop iteration, not a call chain."""

    def __init__(self, app: Application, stage: Stage, partition: int = 0) -> None:
        self.stage = stage
        # Steps that may call functions learn which record they run on (calls.StepScope).
        self.scope = (app.slug, stage.index, partition) if app.calls else None
        self.decode = stage.decoder.fn if stage.decoder else None
        self.steps = stage.steps
        self.route = stage.route
        self.extract = stage.route.extractor.fn if stage.route and stage.route.extractor else None
        self.target_partitions = app.stages[stage.route.target].partitions if stage.route else 1
        # Not when steps may call functions: a call's id comes from the record whose step makes
        # it (StepScope), and a fold ahead of the shuffle runs outside any step's scope.
        self.lift = _lift_into(app, stage) if self.scope is None else None
        self.encoders = [(i, app.sinks[i].encoder_spec().fn) for i in stage.sinks]
        self._partition: dict[str, int] = {}

    def attempt(
        self, batch: Batch | Sequence[Item], table: Mapping[str, bytes],
        skip: Mapping[RecordId, DeadLetter], *, check_outputs: int | None = None,
        now: float = 0.0,
    ) -> BatchResult:
        """Process `batch` against committed state `table` (left untouched: changed state
        comes back in `states`). Raises RecordFailed naming the first failing record; records
        in `skip` are dead-lettered instead of processed. With `check_outputs` (a byte limit),
        every output is serialized on its own, so one that cannot be, or is larger than the
        limit, fails its record (the runner asks for this after a batch could not commit)."""
        if not isinstance(batch, Batch):
            batch = Batch.of(batch)
        total = len(batch)
        dead: list[DeadLetter] = []
        if skip:
            batch, dead = batch.without(skip)
        token = batch_time.set(now)
        try:
            result = self._run(batch, table, check_outputs)
        finally:
            batch_time.reset(token)
        result.dead, result.records_in = dead, total
        return result

    def _run(self, batch: Batch, table: Mapping[str, bytes], check: int | None) -> BatchResult:
        result = BatchResult()
        keys, vals = batch.keys, batch.values
        origin: Sequence[int] | None = None  # output index -> batch index (None: the same)
        where, reason = "decoder", "decode_error"
        try:
            if self.decode is not None:
                vals = _each(self.decode, vals)
            reason = "user_error"
            work: dict[str, dict[str | None, Any]] = {}
            rids = batch.rids() if self.scope is not None else None
            for step in self.steps:
                where = step.name
                fn = step.fn if rids is None else self._scoped(step, rids, origin, len(vals))
                keys, vals, origin = self._step(step, fn, keys, vals, origin, table,
                                                work.setdefault(step.name, {}))
            routed: list[Any] = []
            if self.route is not None:
                where = "key_extractor"
                # Checking outputs one by one (a batch that could not commit): records cross
                # uncombined, so a partial too big to send fails no record that fits alone.
                routed = self._route(vals, result.routed, lift=check is None)
            where, reason = "encoder", "output_error"
            self._encode(vals, result)
            if check is not None:
                where = "output"
                self._check_outputs(routed, result, check)
        except _StepFailed as failed:
            index = origin[failed.index] if origin is not None else failed.index
            raise RecordFailed(batch.item(index), failed.where or where, reason,
                               failed.exc) from failed.exc
        result.states = _dump_states(batch, work)
        result.deadlines = self._deadlines(work)
        return result

    def _deadlines(self, work: Mapping[str, Mapping[str | None, Any]]) -> dict[str, float | None]:
        found: dict[str, float | None] = {}
        for step in self.steps:
            if step.deadline is not None:
                for key, obj in work.get(step.name, {}).items():
                    found[state_slot(step, key)] = step.deadline(obj)
        return found

    def deadlines_in(self, table: Mapping[str, bytes]) -> dict[str, float]:
        """When each buffered micro-batch in committed state `table` is due (a restore's view)."""
        found: dict[str, float] = {}
        for step in self.steps:
            if step.deadline is None:
                continue
            prefix = state_slot_of(step.name, None)
            for slot in (k for k in table if k.startswith(prefix)):
                due = step.deadline(codec.load_state(table[slot]))
                if due is not None:
                    found[slot] = due
        return found

    @property
    def holds_back(self) -> bool:
        """Does a step keep records back until more arrive (windows, micro-batches)? Then end
        of input flushes them."""
        return any(step.flush is not None for step in self.steps)

    def end_of_input(self, table: Mapping[str, bytes]) -> BatchResult:
        """Input has ended (a job's): every step that holds records back lets them go, for each
        key it holds state for, and what it lets go runs through the rest of the stage (as
        Flink's final watermark). A key whose flush fails is dead-lettered; the others go on."""
        return self.release(table, None)

    def release(self, table: Mapping[str, bytes], now: float | None,
                due: Collection[str] | None = None) -> BatchResult:
        """`end_of_input` when `now` is None; else the micro-batches due at `now` fire (of the
        slots in `due` when given: the caller knows which are, so no other state is read)."""
        result = BatchResult()
        token = batch_time.set(now or 0.0)  # what a later batch step stamps its first record with
        try:
            for j, step in enumerate(self.steps):
                if step.flush is None or (now is not None and step.expire is None):
                    continue
                prefix = state_slot_of(step.name, None)
                # Read only (ChainMap is typed for writes too): no copy of the whole table.
                view = ChainMap(result.states, table)  # type: ignore[arg-type]
                slots = view if due is None or now is None else [d for d in due if d in view]
                for slot in sorted(k for k in slots if k.startswith(prefix)):
                    self._flush_key(j, slot[len(prefix):] or None, view, result, now)
        finally:
            batch_time.reset(token)
        return result

    def _let_go(self, step: StepSpec, state: Any, key: str | None, now: float | None) -> list[Any]:
        if now is None:
            assert step.flush is not None
            return list(step.flush(state, key))
        assert step.expire is not None
        return list(step.expire(state, key, now))

    def _flush_key(self, j: int, key: str | None, view: Mapping[str, bytes], result: BatchResult,
                   now: float | None = None) -> None:
        step, work = self.steps[j], {}
        state = work[key] = codec.load_state(view[state_slot(step, key)])
        if now is not None and not _due(step, state, now):
            return  # nothing due for this key: its state is unchanged
        try:
            vals = self._let_go(step, state, key, now)
            keys: list[str | None] = [key] * len(vals)
            out = {step.name: work}
            for later in self.steps[j + 1:]:
                keys, vals, _ = self._step(later, later.fn, keys, vals, None, view,
                                           out.setdefault(later.name, {}))
            if self.route is not None:
                self._route(vals, result.routed)
            self._encode(vals, result)
            result.states.update({state_slot_of(name, k): codec.dump_state(obj)
                                  for name, objs in out.items() for k, obj in objs.items()})
            result.deadlines.update(self._deadlines(out))
        except Exception as exc:  # user code at end of input: this key's letter, not a stall
            self._release_failed(step, key, state, exc, view, result)

    def _release_failed(self, step: StepSpec, key: str | None, state: Any, exc: Exception,
                        view: Mapping[str, bytes], result: BatchResult) -> None:
        """A key whose release failed: dead-lettered. A micro-batch that failed lets go of its
        records (they are the letter's payload, so `dlq replay` can send them again); what
        else a step held stays (the letter carries it)."""
        err = exc.exc if isinstance(exc, _StepFailed) else exc
        payload = view.get(state_slot(step, key), b"")
        if isinstance(err, BatchFailed):
            payload, err = codec.dumps(err.records), err.error
        if step.deadline is not None:  # its buffer was emptied: it must not fire again
            result.states[state_slot(step, key)] = codec.dump_state(state)
            result.deadlines[state_slot(step, key)] = None
        result.dead.append(DeadLetter(self.stage.name, step.name, "user_error",
                                      f"{type(err).__name__}: {err}",
                                      "".join(traceback.format_exception(err)), 1, key, payload,
                                      (0, 0)))

    def _scoped(self, step: StepSpec, rids: list[RecordId], origin: Sequence[int] | None,
                n: int) -> Callable[..., Any]:
        """`step.fn`, each of its `n` calls (one per value, in order) made inside the
        StepScope of the value's input record. Values a fan-out made from one record share
        that record's scope, so their calls are numbered on (never the same id twice)."""
        assert self.scope is not None
        where, fn = self.scope, step.fn
        order = iter([rids[i] for i in origin] if origin is not None else rids)
        scopes: dict[RecordId, calls.StepScope] = {}

        def scoped(*args: Any) -> Any:
            rid = next(order)
            scope = scopes.get(rid) or scopes.setdefault(rid, calls.StepScope(where, step.name, rid))
            token = calls.step_scope.set(scope)
            try:
                return fn(*args)
            finally:
                calls.step_scope.reset(token)

        return scoped

    def _step(
        self, step: StepSpec, fn: Callable[..., Any], keys: list[str | None], vals: list[Any],
        origin: Sequence[int] | None, table: Mapping[str, bytes], work: dict[str | None, Any],
    ) -> tuple[list[str | None], list[Any], Sequence[int] | None]:
        if step.state is None:
            outs = _each(fn, vals)
        else:
            outs = _each_with_state(step, fn, keys, vals, table, work)
        if not step.multi:
            if not _has_none(outs):
                return keys, outs, origin
            kept = [i for i, o in enumerate(outs) if o is not None]
            src = list(map(_listed(origin).__getitem__, kept)) if origin is not None else kept
            return [keys[i] for i in kept], [outs[i] for i in kept], src
        return _fan_out(step, keys, outs, origin)

    def _check_outputs(self, routed: list[Any], result: BatchResult, limit: int) -> None:
        """Each routed value must pickle, and each output fit in `limit` bytes."""
        _each(lambda v: _check_size(v, limit), routed)
        for outs in result.sink_out.values():
            _each(lambda o: _check_size(o, limit), outs)

    def _encode(self, values: list[Any], result: BatchResult) -> None:
        for i, enc in self.encoders:
            outs = _each(enc, values)
            if not set(map(type, outs)) <= _TEXT:
                _each(_as_bytes, outs)  # raises for the first output of the wrong type
            result.sink_out.setdefault(i, []).extend(outs)

    def _route(self, values: list[Any], routed: dict[int, tuple[list[str], list[Any]]],
               lift: bool = True) -> list[Any]:
        """Values into `routed` by the partition of their key. Returns what was routed: the
        values, or (Lift, unless `lift` is False) one Partial per key."""
        keys = _each(self.extract, values) if self.extract else [""] * len(values)
        if not set(map(type, keys)) <= _STR:
            keys = _each(_as_key, keys)
        if lift and self.lift is not None:
            keys, values = _combine_ahead(*self.lift, keys, values)
        cached: list[int | None] = list(map(self._partition.get, keys))
        parts = cast(list[int], cached)
        if None in cached:  # ints and Nones only: no user __eq__ runs
            parts = [self._new_partition(k) if p is None else p
                     for k, p in zip(keys, cached, strict=True)]
        columns: list[tuple[list[str], list[Any]]] = [([], []) for _ in range(self.target_partitions)]
        for p, k, v in zip(parts, keys, values, strict=True):
            dest = columns[p]
            dest[0].append(k)
            dest[1].append(v)
        for p, (ks, vs) in enumerate(columns):
            into = routed.get(p)
            if into is None:
                if ks:
                    routed[p] = (ks, vs)
            else:  # a release routes key after key into the same result
                into[0].extend(ks)
                into[1].extend(vs)
        return values

    def _new_partition(self, key: str) -> int:
        # Why a cache: crc32 of an encoded key costs more than a dict hit, and hot keys repeat.
        if len(self._partition) >= PARTITION_CACHE:
            self._partition.clear()
        p = self._partition[key] = codec.partition_of(key, self.target_partitions)
        return p


def _lift_into(app: Application, stage: Stage) -> tuple[str, Lift] | None:
    """The combiner of the step `stage` routes into, when it has one (its name and Lift)."""
    if stage.route is None:
        return None
    steps = app.stages[stage.route.target].steps
    if not steps or steps[0].lift is None:
        return None
    return steps[0].name, steps[0].lift


_NOTHING = object()


def _combine_ahead(step: str, lift: Lift, keys: list[str], values: list[Any],
                   ) -> tuple[list[str], list[Any]]:
    """Each key's values folded into one Partial (keys in the order they first appear). A
    failing fold names the value it failed on."""
    accs: dict[str, Any] = {}
    initial, update, get = lift.initial, lift.update, accs.get
    i = 0
    try:  # the loop is the job path's hottest: a flat zip with count() and a bound get save
        # ~15% of it against enumerate over a nested zip (28 ns a word, measured)
        for i, k, v in zip(count(), keys, values, strict=False):  # noqa: B007 - the handler reads i
            acc = get(k, _NOTHING)
            accs[k] = update(v, initial() if acc is _NOTHING else acc)
    except Exception as exc:
        raise _StepFailed(i, exc, where=step) from exc
    return list(accs), [Partial(a) for a in accs.values()]


def _due(step: StepSpec, state: Any, now: float) -> bool:
    """Does the step's batch for this key fire at `now`? Decided here, not by what firing
    returns: a batch function may return nothing and still have run."""
    if step.deadline is None:
        return False
    due = step.deadline(state)
    return due is not None and due <= now


class BatchFailed(Exception):  # noqa: N818 - a signal from a batch step to the engine
    """A micro-batch function raised on `records` (taken out of the buffer already)."""

    def __init__(self, records: list[Any], error: BaseException) -> None:
        self.records, self.error = records, error
        super().__init__(f"a batch of {len(records)} record(s) failed: {error}")


def _check_size(value: Any, limit: int) -> None:
    """Raise if `value` cannot be serialized, or is larger than `limit` serialized."""
    size = len(value) if isinstance(value, bytes | str) else len(codec.dumps(value))
    if size > limit:
        msg = f"output of {size} bytes is larger than the {limit}-byte limit per output"
        raise ValueError(msg)


def _dump_states(batch: Batch, work: dict[str, dict[str | None, Any]]) -> dict[str, bytes]:
    states = {}
    for name, objs in work.items():
        for key, obj in objs.items():
            try:
                states[state_slot_of(name, key)] = codec.dump_state(obj)
            except Exception as exc:  # name the first record that touched the state
                item = batch.item(batch.keys.index(key))
                raise RecordFailed(item, name, "state_error", exc) from exc
    return states


def _each_with_state(
    step: StepSpec, fn: Callable[..., Any], keys: list[str | None], vals: list[Any],
    table: Mapping[str, bytes], work: dict[str | None, Any],
) -> list[Any]:
    # Every key's state in hand first, in the order keys first appear (so a state that does
    # not load fails the earliest record of its key), then the step runs over the batch in
    # one C-level map.
    for k in dict.fromkeys(keys):
        if k not in work:
            try:
                work[k] = _load_state(step, k, table)
            except Exception as exc:
                raise _StepFailed(keys.index(k), exc) from exc
    states = list(map(work.__getitem__, keys))
    return _each(fn, vals, states, keys) if step.with_key else _each(fn, vals, states)


class _Origins(Sequence[int]):
    """Output index -> batch index after a fan-out, worked out when asked: only a failure,
    a filter or a step that calls functions asks, so the common batch builds no list of it
    (a list per output was ~15% of a job's split stage)."""

    def __init__(self, made_from: Sequence[int], counts: list[int]) -> None:
        self.made_from, self.counts = made_from, counts
        self.ends = list(accumulate(counts))

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[int]: ...

    def __getitem__(self, i: int | slice) -> int | Sequence[int]:
        if isinstance(i, slice):
            return list(self)[i]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.made_from[bisect_right(self.ends, i)]

    def __iter__(self) -> Iterator[int]:
        return chain.from_iterable(map(repeat, self.made_from, self.counts))


def _fan_out(
    step: StepSpec, keys: list[str | None], outs: list[Any], origin: Sequence[int] | None
) -> tuple[list[str | None], list[Any], Sequence[int]]:
    if set(map(type, outs)) <= _SEQUENCES:  # the usual case, flattened in C
        flat = list(chain.from_iterable(outs))
        if not flat:  # windows filling: nothing comes out of this batch yet
            return [], [], []
        counts = list(map(len, outs))
        if not _has_none(flat):
            made_from = origin if origin is not None else range(len(outs))
            return _spread_keys(keys, counts, len(flat)), flat, _Origins(made_from, counts)
    new_keys: list[str | None] = []
    new_vals: list[Any] = []
    new_origin: list[int] = []
    origin = _listed(origin) if origin is not None else None
    for i, out in enumerate(outs):
        if out is None:
            continue
        if not isinstance(out, list | tuple):
            msg = f"{step.kind} {step.name!r} must return a list, got {type(out).__name__}"
            raise _StepFailed(i, TypeError(msg))
        src = origin[i] if origin is not None else i
        for x in out:
            if x is not None:
                new_keys.append(keys[i])
                new_vals.append(x)
                new_origin.append(src)
    return new_keys, new_vals, new_origin


def _listed(origin: Sequence[int]) -> Sequence[int]:
    """`origin` as a list when it will be indexed value by value (_Origins works each out)."""
    return list(origin) if isinstance(origin, _Origins) else origin


def _spread_keys(keys: list[str | None], counts: list[int], total: int) -> list[str | None]:
    """Each value's key repeated for the outputs made from it; a source stage's keys (all
    None) without walking them."""
    if keys.count(None) == len(keys):  # identity first: no user __eq__ runs on None
        return [None] * total
    return list(chain.from_iterable(map(repeat, keys, counts)))


_STR, _TEXT, _SEQUENCES = frozenset({str}), frozenset({str, bytes}), frozenset({list, tuple})


def _load_state(step: StepSpec, key: str | None, table: Mapping[str, bytes]) -> Any:
    blob = table.get(state_slot(step, key))
    return codec.load_state(blob) if blob is not None else _new_state(step)


def _new_state(step: StepSpec) -> Any:
    factory: Callable[[], Any] | None = step.state
    assert factory is not None
    return factory()


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

    def __init__(self, policy: RetryPolicy, stage: str, raw: bool = False) -> None:
        """`raw`: the stage reads a source (its records are dead-lettered as their bytes)."""
        self.policy, self.stage, self.raw = policy, stage, raw
        self.failures: dict[RecordId, int] = {}
        self.dead: dict[RecordId, DeadLetter] = {}

    def on_failure(self, failed: RecordFailed) -> float:
        """Seconds to wait before the next attempt (0 once the record is dead-lettered)."""
        rid = failed.item.rid
        n = self.failures[rid] = self.failures.get(rid, 0) + 1
        if n >= self.policy.attempts or failed.rejected:
            self.dead[rid] = failed.dead_letter(self.stage, n, self.raw)
            return 0.0
        return float(min(self.policy.backoff * self.policy.factor ** (n - 1), self.policy.max_delay))
