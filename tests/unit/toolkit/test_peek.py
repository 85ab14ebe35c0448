"""wallaroo.control.peek: a dead letter's pickled record shown as the value it was, read
without importing or running anything the pickle names."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import os
import pickle
from pathlib import Path

from wallaroo.control.peek import value_text
from wallaroo.core import codec


@dataclasses.dataclass
class Trade:
    symbol: str
    price: float


class Color(enum.Enum):
    RED = "red"


class Slotted:
    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 3


def shown(value: object) -> str:
    return value_text(codec.dumps(value), pickled=True)


def test_plain_values_show_as_their_repr() -> None:
    assert shown(13) == "13"
    assert shown("word\x1b[2J") == "'word\\x1b[2J'"  # repr: the control character is escaped
    assert shown([1, (2.5, None), {"a": {True}}, b"\x80"]) == "[1, (2.5, None), {'a': {True}}, b'\\x80']"
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    assert shown(when) == repr(when)


def test_objects_of_app_classes_show_their_class_and_state_without_importing_it() -> None:
    assert shown(Trade("ACME", 1.5)) == f"{__name__}.Trade(symbol='ACME', price=1.5)"
    assert shown(Color.RED) == f"{__name__}.Color('red')"
    assert shown(Slotted()) == f"{__name__}.Slotted(size=3)"


class Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (os.mkdir, (self.path,))


def test_a_pickle_that_would_run_code_does_not(tmp_path: Path) -> None:
    target = tmp_path / "made"

    text = shown(Boom(str(target)))

    assert not target.exists()
    assert text == f"posix.mkdir({str(target)!r})"


def test_bytes_that_are_no_pickle_show_as_text_and_a_broken_pickle_says_so() -> None:
    assert value_text(b"raw record", pickled=True) == "raw record"
    assert value_text(b"\x80\x05garbage.", pickled=True) == "<pickled, 10 bytes, unreadable: UnpicklingError>"
    assert value_text(pickle.dumps(13), pickled=False) != "13"  # a raw record is never unpickled


def test_a_value_referenced_many_times_shows_bounded() -> None:
    """A few hundred bytes of pickle can name one list from everywhere: the repr stays short."""
    nested: list[object] = ["x" * 100] * 20
    for _ in range(30):
        nested = [nested] * 20

    assert len(shown(nested)) < 5000


def test_a_tiny_pickle_asking_for_a_huge_allocation_is_not_honoured() -> None:
    # PROTO 2, GLOBAL builtins.bytearray, (10**12,) REDUCE, STOP
    bomb = b"\x80\x02cbuiltins\nbytearray\nq\x00\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85q\x01Rq\x02."
    assert value_text(bomb, pickled=True).startswith("builtins.bytearray(1000000000000")
