"""wallaroo.core.codec: values and state round-trip, including what plain pickle cannot name."""

import enum
import pickle
import sys
from dataclasses import dataclass

import msgpack
import pytest

from wallaroo.core import codec


@dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize("value", [None, 3, "text", b"\x00\xff", [1, (2, 3)], {"k": {1.5}}])
def test_plain_values_round_trip(value: object) -> None:
    assert codec.loads(codec.dumps(value)) == value


def test_a_module_level_class_is_pickled_by_reference() -> None:
    data = codec.dumps(Point(1, 2))

    assert codec.loads(data) == Point(1, 2)
    assert data == pickle.dumps(Point(1, 2), protocol=codec.PROTOCOL)


def test_a_class_defined_inside_a_function_round_trips() -> None:
    def make():
        class Local:
            def __init__(self, n: int) -> None:
                self.n = n

            def double(self) -> int:
                return self.n * 2

        return Local(21)

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(make())
    back = codec.loads(codec.dumps(make()))

    assert type(back).__name__ == "Local"
    assert back.double() == 42


def test_a_lambda_inside_a_value_round_trips() -> None:
    offset = 10
    back = codec.loads(codec.dumps({"f": lambda x: x + offset, "n": 1}))

    assert back["n"] == 1
    assert back["f"](5) == 15


def test_a_batch_hands_back_bytes_and_str_records_as_bytes() -> None:
    assert codec.unpack_batch(codec.pack_batch([b"\x00\xff", "é", ""])) == [b"\x00\xff", "é".encode(), b""]


@pytest.mark.parametrize("bad", [b"\xc1", b"\x92\xa1a", msgpack.packb(3), msgpack.packb([b"a", 1]),
                                 msgpack.packb([[b"a"]]), msgpack.packb({"a": 1})])
def test_bytes_that_are_no_record_batch_raise_value_or_type_error(bad: bytes) -> None:
    with pytest.raises((ValueError, TypeError)):
        codec.unpack_batch(bad)


class Colour(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize(("keys", "values"), [
    (["a", "b"], ["a", "b"]),  # routed on the value itself: the keys travel once
    (["a", "b"], [1, 2.5]),
    (["a", "b", "c"], [b"\xff", None, True]),
    (["k"], [2**70]),  # too big for msgpack: pickled
    (["\udcff"], ["\udcff"]),  # a key from undecodable bytes (surrogateescape)
    (["k"], ["\ud800x"]),
    (["\udcff", "k"], [1, 2**70]),  # both at once: pickled
    (["k", "j"], [("a", 1), {"x": [1]}]),  # containers: pickled (msgpack would turn tuples into lists)
    (["red"], [Colour.RED]),  # a str subclass equal to its key stays what it is
    ([], []),
])
def test_routed_columns_round_trip_with_their_types(keys: list[str], values: list[object]) -> None:
    back_keys, back_values = codec.loads_columns(codec.dumps_columns(keys, values))
    assert (back_keys, back_values) == (keys, values)
    assert [type(v) for v in back_values] == [type(v) for v in values]


def test_plain_columns_are_msgpack_and_a_pickle_still_reads() -> None:
    words = ["apple", "pear", "\udcff"]  # lone surrogates too: msgpack carries them
    assert codec.dumps_columns(words, list(words)).startswith(codec.COLUMNS_TAG)
    assert codec.loads_columns(codec.dumps((["k"], ["v"]))) == (["k"], ["v"])


class Tally:
    """A word count's state: a plain class with plain attributes."""

    kind = "tally"  # class attributes stay on the class

    def __init__(self) -> None:
        self.count = 0
        self.last: str | None = None


class Slotted:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 1


class Custom:
    def __init__(self) -> None:
        self.count = 2

    def __getstate__(self) -> dict[str, int]:
        return {"count": self.count * 10}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.count = state["count"] // 10 + 1  # what only its own __setstate__ knows


@pytest.mark.parametrize("value", [None, True, 7, -(2**63), 2.5, float("-inf"), "wörd\udcff", b"\x00"])
def test_plain_state_values_go_as_msgpack_and_come_back_the_same(value: object) -> None:
    data = codec.dump_state(value)

    assert data[:1] == codec.STATE_TAG
    back = codec.load_state(data)
    assert back == value and type(back) is type(value)


def test_an_object_of_a_plain_class_goes_as_msgpack_and_comes_back_equal() -> None:
    tally = Tally()
    tally.count, tally.last = 41, "word\udcff"
    data = codec.dump_state(tally)

    assert data[:1] == codec.STATE_TAG and len(data) < len(pickle.dumps(tally, protocol=5))
    back = codec.load_state(data)
    assert type(back) is Tally and vars(back) == {"count": 41, "last": "word\udcff"}
    assert back.kind == "tally"


def defined_here() -> object:
    class Local:
        def __init__(self) -> None:
            self.count = 3

    return Local()


@pytest.mark.parametrize("make", [
    lambda: 2**70,  # past msgpack's 64 bits
    lambda: [1, (2, 3)],  # msgpack would give the tuple back as a list
    lambda: {"k": 1},
    Slotted, Custom, defined_here,
    lambda: Point(1, 2),  # a dataclass: plain, but fields may hold anything...
    lambda: _with_list(),  # ...and here one holds a list
], ids=["big int", "list", "dict", "slots", "getstate", "local class", "dataclass", "list attr"])
def test_what_is_not_plain_is_pickled_as_before_and_loads_the_same(make: object) -> None:
    value = make()  # type: ignore[operator]
    data = codec.dump_state(value)

    if isinstance(value, Point):  # plain after all: msgpack, and equal
        assert data[:1] == codec.STATE_TAG and codec.load_state(data) == value
        return
    assert data == codec.dumps(value)  # pickle (cloudpickle for the local class), as before
    back, before = codec.load_state(data), codec.loads(codec.dumps(value))
    assert type(back) is type(before) and _view(back) == _view(before)


def _view(value: object) -> object:
    if hasattr(value, "__slots__"):
        return [getattr(value, name) for name in value.__slots__]
    return vars(value) if hasattr(value, "__dict__") else value


def _with_list() -> Tally:
    tally = Tally()
    tally.last = ["a", "b"]  # type: ignore[assignment]
    return tally


def test_a_state_pickled_before_the_msgpack_form_still_loads() -> None:
    tally = Tally()
    tally.count = 5

    assert vars(codec.load_state(pickle.dumps(tally, protocol=5))) == {"count": 5, "last": None}


def test_an_object_whose_class_name_moved_on_is_not_written_by_that_name() -> None:
    """A redeploy re-homes a class's name while the old version finishes its batches: an
    old object written by name would load as the new class."""
    old = Tally()
    assert codec.dump_state(old)[:1] == codec.STATE_TAG  # decided, and cached
    module = sys.modules[__name__]
    newer = type("Tally", (), {"__module__": __name__})
    module.Tally = newer
    try:
        data = codec.dump_state(old)
    finally:
        module.Tally = Tally
    assert data[:1] != codec.STATE_TAG  # pickled, its class by value: not the newer one
    back = codec.load_state(data)
    assert type(back) is not newer and vars(back) == vars(old)
    odd = Tally()
    odd.__dict__[1] = "a key that is no str"
    assert codec.dump_state(odd) == codec.dumps(odd)
