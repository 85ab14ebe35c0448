"""Micro-batch steps: the function gets a list of records and returns a list of outputs.

    @wl.batch_computation(name="enrich", max_size=500, max_wait=2.0)
    def enrich(records: list[Order]) -> list[Enriched]:
        return lookup_many(records)            # one round trip for 500 records

    @wl.state_batch_computation(name="bulk total", state=Total, max_size=100)
    def bulk_total(records: list[Sale], total: Total) -> list[str]:
        ...                                     # one key's records, and its state

A batch fires when it holds `max_size` records, `max_wait` seconds after its FIRST record was
buffered (not a debounce: a steady trickle cannot hold it back), or at end of input (a job's).
Before a keyed step (`key_by`) batches are per partition; after it, per key.

Exactly once: buffered records are keyed state, committed with the batch that brought them,
so a crash neither loses nor re-forms them; a batch fires inside the commit of the record (or
the timer message) that completes it, and a committed batch is never run again. Timers are
messages: when a buffer's time is up, its partition publishes a timer message into its own
input (a source stage's control subject, which clients cannot write), and the batch fires when
that message is processed, so a replay fires it at the same point. Time is the time JetStream
stored the records (wallaroo.testing's fake clock in tests).

A batch function that raises is retried like any step (the batch is formed anew from the same
buffer); after the last attempt the record that completed it is dead-lettered with the error,
and the others stay buffered for the next batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from wallaroo.api import StepSpec, _attach, _check_arity
from wallaroo.core.engine import BatchFailed, batch_time
from wallaroo.core.errors import DefinitionError, MissingArgumentsError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Buffer:
    """One partition's or key's records waiting for their batch, and the user's state."""

    records: list[Any] = field(default_factory=list)
    first_at: float = 0.0
    user: Any = None


@dataclass(frozen=True)
class _BatchLogic:
    fn: Callable[..., Any]
    max_size: int
    max_wait: float | None
    state: Callable[[], Any] | None

    def step(self, record: Any, buf: Buffer, key: Any) -> list[Any]:
        if not buf.records:
            buf.first_at = batch_time.get()
        buf.records.append(record)
        return self.fire(buf) if len(buf.records) >= self.max_size else []

    def fire(self, buf: Buffer) -> list[Any]:
        records, buf.records, buf.first_at = buf.records, [], 0.0
        if self.state is None:
            outs = self.fn(records)
        else:
            if buf.user is None:
                buf.user = self.state()
            outs = self.fn(records, buf.user)
        return _as_list(self.fn, outs)

    def let_go(self, buf: Buffer) -> list[Any]:
        """Fire at a timer or at end of input: on failure the engine dead-letters the batch's
        records (they are out of the buffer), so a poison batch never stays buffered."""
        records = list(buf.records)
        try:
            return self.fire(buf)
        except Exception as exc:
            raise BatchFailed(records, exc) from exc

    def flush(self, buf: Buffer, key: Any) -> list[Any]:
        return self.let_go(buf) if buf.records else []

    def expire(self, buf: Buffer, key: Any, now: float) -> list[Any]:
        due = self.deadline(buf)
        return self.let_go(buf) if due is not None and due <= now else []

    def deadline(self, buf: Buffer) -> float | None:
        if not buf.records or self.max_wait is None:
            return None
        return buf.first_at + self.max_wait


def _as_list(fn: Callable[..., Any], outs: Any) -> list[Any]:
    if outs is None:
        return []
    if not isinstance(outs, list | tuple):
        msg = f"batch step {fn.__name__!r} must return a list of outputs, got {type(outs).__name__}"
        raise TypeError(msg)
    return list(outs)


DEFAULT_MAX_SIZE = 100


def batch_computation(name: str, max_size: int = DEFAULT_MAX_SIZE, max_wait: float | None = None
                      ) -> Callable[[F], F]:
    """A micro-batch step: `fn(records: list) -> list of outputs`, called with up to
    `max_size` records at once (see the module docstring for when a batch fires)."""
    return _batch_decorator("batch_computation", name, max_size, max_wait, None)


def state_batch_computation(name: str, state: Callable[[], Any] | None = None,
                            max_size: int = DEFAULT_MAX_SIZE, max_wait: float | None = None
                            ) -> Callable[[F], F]:
    """A keyed micro-batch step: `fn(records: list, state) -> list of outputs`, called with
    up to `max_size` records of ONE key and that key's state (made with `state()`)."""
    if callable(name) and not isinstance(name, str):
        example = '@wallaroo.state_batch_computation(name="my batch", state=MyState, max_size=100)'
        kind = "state_batch_computation"
        raise MissingArgumentsError(kind, example)
    if not callable(state):
        msg = (f"@wallaroo.state_batch_computation(name={name!r}) needs state=, a class (or "
               f"zero-argument factory) that makes the per-key state, got {state!r}")
        raise DefinitionError(msg)
    return _batch_decorator("state_batch_computation", name, max_size, max_wait, state)


def _batch_decorator(kind: str, name: str, max_size: int, max_wait: float | None,
                     state: Callable[[], Any] | None) -> Callable[[F], F]:
    example = f'@wallaroo.{kind}(name="my batch", max_size=100, max_wait=1.0)'
    if callable(name) and not isinstance(name, str):
        raise MissingArgumentsError(kind, example)
    _check_limits(kind, name, max_size, max_wait, example)

    def decorate(fn: F) -> F:
        _check_arity(fn, kind, 1 if state is None else 2)
        logic = _BatchLogic(fn, max_size, None if max_wait is None else float(max_wait), state)
        return _attach(fn, StepSpec(kind="state_computation_multi", name=name, fn=logic.step,
                                    state=Buffer, with_key=True, flush=logic.flush,
                                    expire=logic.expire, deadline=logic.deadline))

    return decorate


def _check_limits(kind: str, name: object, max_size: object, max_wait: object, example: str) -> None:
    if not isinstance(name, str) or not name.strip():
        msg = f"@wallaroo.{kind} needs a non-empty name: `{example}`, got name={name!r}"
        raise DefinitionError(msg)
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
        msg = f"@wallaroo.{kind}(name={name!r}): max_size must be a whole number >= 1, got {max_size!r}"
        raise DefinitionError(msg)
    if max_wait is not None and (not isinstance(max_wait, int | float) or max_wait <= 0):
        msg = f"@wallaroo.{kind}(name={name!r}): max_wait must be seconds > 0 (or None), got {max_wait!r}"
        raise DefinitionError(msg)


__all__ = ["batch_computation", "state_batch_computation"]
