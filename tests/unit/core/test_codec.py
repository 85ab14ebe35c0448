"""wallaroo.core.codec: values and state round-trip, including what plain pickle cannot name."""

import enum
import pickle
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
