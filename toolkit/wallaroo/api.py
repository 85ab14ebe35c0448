"""Decorators of the Wallaroo 0.6 API: each validates when applied, attaches a frozen spec
and returns the user's function unchanged, so it stays a plain callable."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from wallaroo.core.errors import ArityError, DefinitionError, MissingArgumentsError, f_repr
from wallaroo.core.frames import Framing, framing_of

F = TypeVar("F", bound=Callable[..., Any])
SPEC_ATTR = "__wallaroo_spec__"

StepKind = Literal[
    "computation", "computation_multi", "state_computation", "state_computation_multi"
]


class Partial(NamedTuple):
    """An accumulator a stage combined ahead of the shuffle (see Lift) from some of a key's
    records, sent in their place: the keyed step `combine`s it into the key's state."""

    acc: Any


@dataclass(frozen=True)
class Lift:
    """A keyed step's combiner, run ahead of the shuffle (as Beam lifts a CombineFn ahead of
    its GroupByKey, and Spark combines map-side): the stage routing into the step folds each
    batch's records per key with `update(record, initial())` and sends one Partial per key
    instead of every record. Only for steps whose result does not depend on how records are
    grouped into batches (a window over the whole input, not a count of records)."""

    initial: Callable[[], Any]
    update: Callable[[Any, Any], Any]


@dataclass(frozen=True)
class StepSpec:
    kind: StepKind
    name: str
    fn: Callable[..., Any]
    state: Callable[[], Any] | None = None
    with_key: bool = False  # fn(data, state, key): windows, whose output names the key
    # flush(state, key) -> outputs: what the step still holds for a key when input ends (a
    # job's end): windows emit their open windows, as Flink does on its final watermark.
    flush: Callable[[Any, str | None], list[Any]] | None = None
    # Micro-batches: expire(state, key, now) -> outputs of a batch whose time is up, and
    # deadline(state) -> when the key's buffered batch is due (None: nothing waits).
    expire: Callable[[Any, str | None, float], list[Any]] | None = None
    deadline: Callable[[Any], float | None] | None = None
    # How records may be combined ahead of the key_by (set on every global window step; the
    # engine lifts it only for the first step of a keyed stage, in an app with no calls).
    lift: Lift | None = None
    # Emits only when input ends (a job's): refused in an app whose input never ends.
    at_end_only: bool = False

    @property
    def multi(self) -> bool:
        return self.kind.endswith("_multi")

    @property
    def stateful(self) -> bool:
        return self.state is not None


@dataclass(frozen=True)
class KeyExtractorSpec:
    fn: Callable[[Any], Any]


@dataclass(frozen=True)
class DecoderSpec:
    fn: Callable[[bytes], Any]
    header_length: int | None = None
    length_fmt: str | None = None

    @property
    def framing(self) -> Framing | None:
        """How a file of this source's records is split: by these frames, or (None) lines."""
        return framing_of(self.header_length, self.length_fmt)


@dataclass(frozen=True)
class EncoderSpec:
    fn: Callable[[Any], bytes | str]


Spec = StepSpec | KeyExtractorSpec | DecoderSpec | EncoderSpec


def spec_of(fn: object) -> Spec | None:
    """The spec a wallaroo decorator attached to `fn`, or None if it was never decorated."""
    spec = getattr(fn, SPEC_ATTR, None)
    return spec if isinstance(spec, StepSpec | KeyExtractorSpec | DecoderSpec | EncoderSpec) else None


def _positional_range(fn: Callable[..., Any]) -> tuple[int, float]:
    """How many positional arguments `fn` needs at least and accepts at most."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return (0, float("inf"))
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
    return required, float("inf") if variadic else float(len(positional))


def _check_arity(fn: Callable[..., Any], decorator: str, expected: int) -> None:
    if not callable(fn):
        msg = f"@wallaroo.{decorator} decorates a function, got {fn!r}"
        raise DefinitionError(msg)
    low, high = _positional_range(fn)
    if not low <= expected <= high:
        raise ArityError(fn, decorator, expected, low)


def _attach(fn: F, spec: Spec) -> F:
    setattr(fn, SPEC_ATTR, spec)
    return fn


class _Unset:
    """No state= given: Wallaroo 0.5 passes the state class to ApplicationBuilder instead."""

    def __repr__(self) -> str:
        return "no state="


UNSET: Any = _Unset()


def _step_decorator(kind: StepKind, name: object, state: object = None) -> Callable[[F], F]:
    stateful = kind.startswith("state_")
    example = f'@wallaroo.{kind}(name="my step"' + (", state=MyState)" if stateful else ")")
    if callable(name) and not isinstance(name, str):
        raise MissingArgumentsError(kind, example)
    if not isinstance(name, str) or not name.strip():
        msg = f"@wallaroo.{kind} needs a non-empty name: `{example}`, got name={name!r}"
        raise DefinitionError(msg)
    if state is UNSET:
        return _later_state(kind, name)
    if stateful and not callable(state):
        msg = (f"@wallaroo.{kind}(name={name!r}) needs state=, a class (or zero-argument "
               f"factory) that makes the per-key state, got {state!r}: `{example}`")
        raise DefinitionError(msg)

    def decorate(fn: F) -> F:
        _check_arity(fn, kind, 2 if stateful else 1)
        factory = state if stateful and callable(state) else None
        return _attach(fn, StepSpec(kind=kind, name=name, fn=fn, state=factory))

    return decorate


def _later_state(kind: StepKind, name: str) -> Callable[[F], F]:
    """A 0.5-style state computation: its state class comes with ApplicationBuilder's
    to_stateful / to_state_partition; `.to()` refuses it until then (see as_step)."""

    def decorate(fn: F) -> F:
        _check_arity(fn, kind, 2)
        return _attach(fn, StepSpec(kind=kind, name=name, fn=fn))

    return decorate


def computation(name: str) -> Callable[[F], F]:
    """A stateless step: `fn(data) -> output`; returning None drops the record."""
    return _step_decorator("computation", name)


def computation_multi(name: str) -> Callable[[F], F]:
    """A stateless step that fans out: `fn(data) -> list of outputs`."""
    return _step_decorator("computation_multi", name)


def state_computation(name: str, state: Callable[[], Any] = UNSET) -> Callable[[F], F]:
    """A keyed stateful step: `fn(data, state) -> output`. One `state()` per key, made on first
    sight and kept by the runtime; mutate it in place. (Without state=, as in Wallaroo 0.5, it
    goes to `ApplicationBuilder.to_stateful` / `to_state_partition`, which name the state.)"""
    return _step_decorator("state_computation", name, state)


def state_computation_multi(name: str, state: Callable[[], Any] = UNSET) -> Callable[[F], F]:
    """A keyed stateful step that fans out: `fn(data, state) -> list of outputs`."""
    return _step_decorator("state_computation_multi", name, state)


def key_extractor(fn: F) -> F:
    """Marks `fn(data) -> str` as the function that keys records for `.key_by()`."""
    _check_arity(fn, "key_extractor", 1)
    return _attach(fn, KeyExtractorSpec(fn=fn))


def encoder(fn: F) -> F:
    """Marks `fn(output) -> bytes | str` as a sink encoder."""
    _check_arity(fn, "encoder", 1)
    return _attach(fn, EncoderSpec(fn=fn))


def decoder(
    fn: F | None = None, *, header_length: int | None = None, length_fmt: str | None = None
) -> Any:
    """Marks `fn(bytes) -> data` as a source decoder. Usable bare (`@decoder`) or with Wallaroo
    0.6's framing arguments: a file sent to the source (`wallaroo send --file`, `dev --input`,
    a FileSource) is then split into length-prefixed frames, `header_length` bytes unpacked by
    `length_fmt` (`struct`) giving the payload's length; `fn` gets the payload alone. A text
    file is still split into lines (Wallaroo's sender framed each line of one)."""
    framing_of(header_length, length_fmt)  # a mismatch fails here, naming the fix

    def decorate(f: F) -> F:
        _check_arity(f, "decoder", 1)
        return _attach(f, DecoderSpec(fn=f, header_length=header_length, length_fmt=length_fmt))

    return decorate if fn is None else decorate(fn)


def as_step(fn: object) -> StepSpec:
    spec = spec_of(fn)
    if isinstance(spec, StepSpec) and spec.kind.startswith("state_") and spec.state is None:
        msg = (f"{_name(fn)} is a @wallaroo.{spec.kind} without state=: give it one "
               f"(`@wallaroo.{spec.kind}(name={spec.name!r}, state=MyState)`), or pass it to "
               "a wallaroo.ApplicationBuilder's to_stateful / to_state_partition with its state")
        raise DefinitionError(msg)
    if isinstance(spec, StepSpec):
        return spec
    msg = (f"{_name(fn)} is not a step: decorate it with @wallaroo.computation(name=...) "
           "or @wallaroo.state_computation(name=..., state=...) before passing it to .to()")
    raise DefinitionError(msg)


_S = TypeVar("_S", KeyExtractorSpec, DecoderSpec, EncoderSpec)


def _as_spec(fn: object, kind: type[_S], decorator: str, role: str) -> _S:
    """`fn`'s spec of `kind`; an undecorated one-argument function is taken as one too."""
    spec = spec_of(fn)
    if isinstance(spec, kind):
        return spec
    if callable(fn) and spec is None:
        _check_arity(fn, decorator, 1)
        return kind(fn=fn)
    msg = f"{_name(fn)} cannot {role}: pass a function decorated with @wallaroo.{decorator}"
    raise DefinitionError(msg)


def as_key_extractor(fn: object) -> KeyExtractorSpec:
    return _as_spec(fn, KeyExtractorSpec, "key_extractor", "key records")


def as_decoder(fn: object) -> DecoderSpec:
    return _as_spec(fn, DecoderSpec, "decoder", "decode records")


def as_encoder(fn: object) -> EncoderSpec:
    return _as_spec(fn, EncoderSpec, "encoder", "encode outputs")


def _name(fn: object) -> str:
    return f_repr(fn) if callable(fn) else repr(fn)


def utf8_decoder(data: bytes) -> str:
    """The default decoder: each record is UTF-8 text."""
    return data.decode("utf-8")


def text_encoder(output: Any) -> bytes:
    """The default encoder: bytes pass through, anything else is sent as its UTF-8 `str()`."""
    return output if isinstance(output, bytes) else str(output).encode("utf-8")
