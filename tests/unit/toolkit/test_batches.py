"""Micro-batch steps, run in-process through wallaroo.testing (the runner's commit loop on an
in-memory JetStream, with a fake clock): batches fire at max_size, max_wait after their first
record (not a debounce), and at end of input; keyed ones per key with state; crashes change
nothing."""

from __future__ import annotations

import pytest

import wallaroo as wl
from wallaroo import testing
from wallaroo.core import codec
from wallaroo.core.errors import DefinitionError, MissingArgumentsError


@wl.decoder
def text(data: bytes) -> str:
    return data.decode()


@wl.batch_computation(name="join", max_size=3, max_wait=2.0)
def join(records: list[str]) -> list[str]:
    return ["+".join(records)]


@wl.key_extractor
def first_letter(record: str) -> str:
    return record[0]


class Seen:
    batches = 0


@wl.state_batch_computation(name="per key", state=Seen, max_size=2, max_wait=10.0)
def per_key(records: list[str], seen: Seen) -> list[str]:
    seen.batches += 1
    return [f"{records[0][0]} batch {seen.batches}: {','.join(records)}"]


def app_with(*steps: object, key: bool = False) -> wl.Application:
    p = wl.source("in", wl.StreamSource(decoder=text))
    if key:
        p = p.key_by(first_letter)
    for step in steps:
        p = p.to(step)
    return wl.build_application("batches", p.to_sink(wl.StreamSink("out", encoder=lambda s: s + "\n")),
                                partitions=2)


def test_a_batch_fires_at_max_size_and_the_rest_at_end_of_input() -> None:
    inputs = ["a", "b", "c", "d", "e", "f", "g"]
    assert testing.run(app_with(join), inputs).lines() == ["a+b+c", "d+e+f"]
    assert testing.run(app_with(join), inputs, end_of_input=True).lines() == ["a+b+c", "d+e+f", "g"]


def test_max_wait_counts_from_the_first_buffered_record_not_the_last() -> None:
    inputs = ["a", "b", testing.advance(2.5), "c", testing.advance(1.0), "d",
              testing.advance(1.5), "e"]
    # a, b: due at 2.0, fired when 2.5 passed. c came at 2.5: due at 4.5, so d (at 3.5) does
    # not push it back: at 5.0 [c, d] fires. A debounce would still wait (until 5.5).
    assert testing.run(app_with(join), inputs).lines() == ["a+b", "c+d"]


def test_keyed_batches_hold_one_keys_records_and_its_state() -> None:
    inputs = ["a1", "b1", "a2", "a3", "b2", "a4", testing.advance(11), "b3"]
    got = testing.run(app_with(per_key, key=True), inputs, end_of_input=True).lines()
    assert sorted(got) == ["a batch 1: a1,a2", "a batch 2: a3,a4", "b batch 1: b1,b2",
                           "b batch 2: b3"]


@pytest.mark.parametrize("point", ["append", "publish", "commit"])
def test_crashes_neither_lose_nor_reform_batches(point: str) -> None:
    inputs = [f"x{i}" for i in range(20)] + [testing.advance(3), "y", "z"]
    expected = testing.run(app_with(join), inputs, end_of_input=True).lines()
    assert expected[-1] == "y+z" and len(expected) == 8
    runs = testing.run(app_with(join), inputs, end_of_input=True).commits
    for crash in range(1, runs + 1):
        got = testing.run(app_with(join), inputs, end_of_input=True, crash_after=crash,
                          crash_at=point).lines()  # type: ignore[arg-type]
        assert got == expected, (crash, point)


def test_the_decorated_function_stays_plain_and_mistakes_say_the_fix() -> None:
    assert join(["x", "y"]) == ["x+y"]
    with pytest.raises(DefinitionError, match="max_size must be a whole number >= 1"):
        wl.batch_computation(name="b", max_size=0)
    with pytest.raises(DefinitionError, match="max_wait must be seconds > 0"):
        wl.batch_computation(name="b", max_size=5, max_wait=-1)
    with pytest.raises(MissingArgumentsError):
        wl.batch_computation(join)  # type: ignore[arg-type, call-arg]
    with pytest.raises(DefinitionError, match="needs state="):
        wl.state_batch_computation(name="b", state=None, max_size=5)  # type: ignore[arg-type]


@wl.batch_computation(name="sink only", max_size=10, max_wait=1.0)
def sink_only(records: list[str]) -> None:
    """Fires for its side effect alone: returns nothing."""


def test_a_timer_batch_that_returns_nothing_still_empties_its_buffer() -> None:
    inputs = ["a", "b", testing.advance(2), "c", testing.advance(2)]
    result = testing.run(app_with(sink_only), inputs)
    assert result.lines() == []
    states = [v for table in result.states.values() for v in table.values()]
    assert states and all(codec.load_state(v).records == [] for v in states)


@wl.batch_computation(name="poison", max_size=10, max_wait=1.0)
def poison(records: list[str]) -> list[str]:
    if "bad" in records:
        raise ValueError("a bad record in the batch")
    return ["+".join(records)]


def test_a_timer_batch_that_fails_is_dead_lettered_whole_and_leaves_the_buffer() -> None:
    inputs = ["a", "bad", testing.advance(2), "c", testing.advance(2)]
    result = testing.run(app_with(poison), inputs)
    assert result.lines() == ["c"]
    (letter,) = result.dead_letters
    assert codec.loads(letter.payload) == ["a", "bad"] and "a bad record" in letter.error


@wl.batch_computation(name="by time", max_size=100, max_wait=2.0)
def by_time(records: list[str]) -> list[str]:
    return ["+".join(records)]


def test_records_that_keep_coming_do_not_hold_a_due_batch_back() -> None:
    inputs: list[object] = []
    for i in range(9):  # one every 0.5 s; the batch of t0 is due at 2.0
        inputs += [f"t{i}", testing.advance(0.5)]
    got = testing.run(app_with(by_time), inputs).lines()  # type: ignore[arg-type]
    assert got == ["t0+t1+t2+t3", "t4+t5+t6+t7"]  # t8 waits for its own max_wait
