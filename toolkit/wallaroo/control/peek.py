"""Show what a dead letter holds without running anything it holds.

A record dead-lettered after a `key_by` is the value a runner pickled (its bytes as they were
when the value is bytes). `wallaroo dlq list` runs on the operator's machine, where the app's
classes may not even import, and an operator who may read dead letters (the client role) is
not thereby trusting the code of whoever deployed the app. So pickles are read with an
unpickler that imports nothing and calls nothing: plain data (str, numbers, bytes, lists,
tuples, dicts, sets) comes back as it was; an object of any class comes back as a stand-in
that shows the class's name and the state the pickle holds (`mod.Trade(price=1.5)`)."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import io
import pickle
import reprlib
import uuid
from typing import Any

_MAX_PROTOCOL = pickle.HIGHEST_PROTOCOL


class _Stand:
    """An object of a class the pickle names: never imported, never called. It keeps the
    arguments the pickle would have called the class with, and the state it would have set."""

    _name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs, self._state = args, kwargs, None

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stand:  # NEWOBJ calls cls.__new__ alone
        obj = super().__new__(cls)
        obj._args, obj._kwargs, obj._state = args, kwargs, None
        return obj

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # a dict subclass's items
        self._args += ((key, value),)

    def append(self, value: Any) -> None:  # a list subclass's items
        self._args += (value,)

    def extend(self, values: Any) -> None:
        self._args += tuple(values)

    def shown(self, r: reprlib.Repr, level: int) -> str:
        if level <= 0:
            return f"{self._name}(...)"
        parts = [r.repr1(a, level - 1) for a in self._args]
        parts += [f"{k}={r.repr1(v, level - 1)}" for k, v in self._kwargs.items()]
        state = self._state
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]  # (None, slots): a class with __slots__
        if isinstance(state, dict):
            parts += [f"{k}={r.repr1(v, level - 1)}" for k, v in state.items()]
        elif state is not None:
            parts.append(r.repr1(state, level - 1))
        return f"{self._name}({', '.join(parts)})"

    def __repr__(self) -> str:
        return _SHOWN.repr(self)


class _Shown(reprlib.Repr):
    """repr with bounds: a pickle of a few bytes can reference one list from many places,
    and a full repr of that grows exponentially."""

    def __init__(self) -> None:
        super().__init__()
        # At most 8**3 leaves: a dead letter's preview is one line anyway.
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 200, 200, 60
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 8
        self.maxdeque = self.maxarray = 8

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, _Stand):
            return x.shown(self, level)
        return super().repr1(x, level)


_SHOWN = _Shown()


# Value types of the standard library that build from their pickle without running anything
# else: shown as themselves (a datetime as a datetime, not as its packed bytes). Not
# bytearray: `bytearray(10**12)` is a pickle of a few bytes that asks for a terabyte.
_PLAIN_TYPES: dict[tuple[str, str], type] = {
    (t.__module__, t.__qualname__): t
    for t in (datetime.date, datetime.datetime, datetime.time, datetime.timedelta,
              datetime.timezone, decimal.Decimal, fractions.Fraction, uuid.UUID,
              collections.OrderedDict, collections.deque, complex, set, frozenset)
}


class _NoImports(pickle.Unpickler):
    """Every global the pickle names (a class, a function) resolves to a stand-in type, but
    for a few plain value types: the pickle can only build data and stand-ins, it cannot
    import or call anything."""

    def find_class(self, module: str, name: str) -> Any:
        plain = _PLAIN_TYPES.get((module, name))
        return plain or type(name, (_Stand,), {"_name": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        msg = "a persistent id: not a pickle a runner writes"
        raise pickle.UnpicklingError(msg)


def is_pickle(data: bytes) -> bool:
    """Does `data` look like a pickle of protocol 2 or later (what runners write)?"""
    return len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= _MAX_PROTOCOL and data[-1:] == b"."


def unpickled(data: bytes) -> Any:
    """The value a runner pickled, classes as stand-ins; raises pickle.UnpicklingError (and
    whatever a broken pickle raises) when it does not read."""
    return _NoImports(io.BytesIO(data)).load()


def value_text(data: bytes, pickled: bool) -> str:
    """A dead letter's record for a person: the repr of what a runner pickled (`pickled`: a
    record after a key_by), else the bytes as text. Pickled bytes that do not read show as
    `<pickled, N bytes>`, never as if they were text."""
    if not (pickled and is_pickle(data)):
        return data.decode("utf-8", "replace")
    try:
        return _SHOWN.repr(unpickled(data))
    except Exception as err:  # a broken pickle can raise anything; say that it did not read
        return f"<pickled, {len(data)} bytes, unreadable: {type(err).__name__}>"
