"""How the runtime serializes user values and state between its own processes.

Plain pickle first (fast, classes by reference); cloudpickle only for what pickle cannot
name (lambdas, classes defined in functions). Bytes from outside the app never come through
here: they go through the app's decoder."""

from __future__ import annotations

import importlib
import pickle
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import cloudpickle
import msgpack

T = TypeVar("T")
PROTOCOL = 5
SEND_BATCH = 256  # records per message that sources publish (`wallaroo send`, connectors)


def dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        # Why: objects of classes that pickle cannot import by name (defined in a function,
        # or in a module shipped by value that is not registered) still round-trip.
        return bytes(cloudpickle.dumps(obj, protocol=PROTOCOL))


def loads(data: bytes) -> Any:
    return pickle.loads(data)


# Records routed between stages: (keys, values). Plain values go as msgpack behind this tag
# (0xc1, a byte msgpack never uses; a pickle starts with 0x80): packing and unpacking them
# cost about a third of pickling, and a stage that routes on the value itself (a word count's
# words) sends its keys once. Anything else is pickled.
COLUMNS_TAG = b"\xc1"
# Why surrogatepass wherever runners msgpack str: a key from undecodable bytes is a str with
# lone surrogates (the engine decodes bytes keys with surrogateescape), and it routes records
# and names keyed state: routed columns, commit records and snapshots must carry it (strict
# UTF-8 cannot). Only runners read these back, with the same handler.
STR_ERRORS = "surrogatepass"
_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})
_STR = frozenset({str})


def dumps_columns(keys: list[str], values: list[Any]) -> bytes:
    types = set(map(type, values))
    if types <= _PLAIN:
        # The values are the keys (a word count's words): == is C-fast on the same objects;
        # the type check keeps a str subclass (a StrEnum equal to its key) from coming back a str.
        same = types <= _STR and keys == values
        try:
            return COLUMNS_TAG + _packed([keys, None if same else values])
        except OverflowError:  # an int past 64 bits
            return dumps((keys, values))
    return dumps((keys, values))


def _packed(body: list[Any]) -> bytes:
    try:
        return bytes(msgpack.packb(body, use_bin_type=True))
    except UnicodeEncodeError:  # lone surrogates; strict first: the handler halves its speed
        return bytes(msgpack.packb(body, use_bin_type=True, unicode_errors=STR_ERRORS))


def loads_columns(data: bytes) -> Any:
    """What dumps_columns made: (keys, values), or what a pickled body holds (checked by
    the caller, which names a malformed message)."""
    if data[:1] != COLUMNS_TAG:
        return loads(data)
    body = msgpack.unpackb(data[1:], raw=False, unicode_errors=STR_ERRORS)
    if type(body) is not list or len(body) != 2:
        msg = "an internal batch is a [keys, values] pair"
        raise TypeError(msg)
    keys, values = body
    return keys, keys if values is None else values


# Keyed state: a plain value, or an object of a plain class whose attributes are plain
# values, goes as msgpack behind STATE_TAG (the same byte, never a pickle's first): its dump
# costs ~40% and its load ~65% of pickle's (1.1 vs 2.7 us and 1.4 vs 2.2 us for a word
# count's WordTotal), paid per key and batch. Anything else is pickled as before, and a
# pickled state (written before this, or not plain) loads as before.
STATE_TAG = COLUMNS_TAG
_OBJECT, _VALUE = 0, 1
# Per class, decided once (a plain dict, emptied when a deploy registers its classes: a weak
# one would cost a weakref per lookup).
_state_classes: dict[type, tuple[str, str] | None] = {}


def dump_state(obj: Any) -> bytes:
    if type(obj) in _PLAIN:
        body: list[Any] = [_VALUE, obj]
    else:
        named = _plain_class(type(obj))
        attrs = getattr(obj, "__dict__", None)
        if named is None or type(attrs) is not dict or not set(map(type, attrs)) <= _STR \
                or not set(map(type, attrs.values())) <= _PLAIN:
            return dumps(obj)
        body = [_OBJECT, *named, attrs]
    try:
        return STATE_TAG + _packed(body)
    except OverflowError:  # an int past 64 bits
        return dumps(obj)


def load_state(data: bytes) -> Any:
    if data[:1] != STATE_TAG:
        return loads(data)
    body = msgpack.unpackb(data[1:], raw=False, unicode_errors=STR_ERRORS, use_list=True,
                           strict_map_key=False)
    if body[0] == _VALUE:
        return body[1]
    _, module, qualname, attrs = body
    cls = getattr(sys.modules.get(module) or importlib.import_module(module), qualname)
    obj = cls.__new__(cls)
    obj.__dict__.update(attrs)
    return obj


def forget_state_classes() -> None:
    """Drop what `_plain_class` decided (a redeploy's classes replace the old ones, which
    must not be kept alive, with their modules, by this cache)."""
    _state_classes.clear()


def _plain_class(cls: type) -> tuple[str, str] | None:
    """(module, name) of a class whose instances pickle as pickle's default does (created
    with __new__, their __dict__ restored) and that pickle would find by that name; else
    None. Decided once per class."""
    if cls in _state_classes:
        named = _state_classes[cls]
        # The name may have moved on: a redeploy re-homes it (packaging.register_classes)
        # while the old version still finishes its batches. Pickle would refuse it too.
        if named is None or getattr(sys.modules.get(named[0]), named[1], None) is cls:
            return named
        return None
    named = None
    default = all(getattr(cls, name, None) is getattr(object, name, None) for name in _REDUCERS) \
        and "__slots__" not in _mro_dicts(cls)
    if default and "." not in cls.__qualname__ and "<" not in cls.__qualname__:
        home = sys.modules.get(cls.__module__)
        if home is not None and getattr(home, cls.__qualname__, None) is cls:
            named = (cls.__module__, cls.__qualname__)
    _state_classes[cls] = named
    return named


# What a class overrides to pickle otherwise than by __new__ and its __dict__.
_REDUCERS = ("__reduce_ex__", "__reduce__", "__getstate__", "__setstate__", "__getnewargs_ex__",
             "__getnewargs__", "__new__")


def _mro_dicts(cls: type) -> set[str]:
    return {name for klass in cls.__mro__[:-1] for name in vars(klass)}


def partition_of(key: str, partitions: int) -> int:
    """Stable across processes and Python versions (never the salted built-in hash())."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % partitions


def pack_batch(records: Sequence[bytes | str]) -> bytes:
    """The wire form of a record batch: raw source records, or a commit's encoded outputs
    (an encoder's str travels as a msgpack string: no per-record re-encoding in the runner)."""
    return bytes(msgpack.packb(records, use_bin_type=True))


def unpack_batch(data: bytes) -> list[bytes]:
    """The records of a batch, as bytes (a str record as its UTF-8). Bytes that are no
    batch (not msgpack, or not a list of bin/str) raise ValueError or TypeError."""
    # raw=True hands str records over as their UTF-8 bytes: no re-encoding, and the one
    # type check per record below is all the shape check a batch needs.
    records = msgpack.unpackb(data, raw=True)
    if type(records) is not list:
        msg = f"a record batch is a msgpack list, not {type(records).__name__}"
        raise TypeError(msg)
    return [r if type(r) is bytes else _not_a_record(r) for r in records]


def _not_a_record(value: Any) -> NoReturn:
    msg = f"a record is msgpack bin or str, not {type(value).__name__}"
    raise TypeError(msg)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter), consumed as they are yielded."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
