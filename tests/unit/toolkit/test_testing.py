"""wallaroo.testing: run an app in-process on the runners' commit loop, no NATS server."""

import json
from pathlib import Path

import pytest

import wallaroo as wl
from wallaroo import testing
from wallaroo.core import codec
from wallaroo.core.engine import RetryPolicy
from wallaroo.core.errors import UnknownNameError
from wallaroo.core.packaging import load_app
from wallaroo.plan import Application


class Total:
    def __init__(self) -> None:
        self.count = 0


@wl.computation_multi(name="split")
def split(line):
    return line.split()


@wl.key_extractor
def word(w):
    return w


@wl.state_computation(name="count", state=Total)
def count(w, total):
    if w == "boom":
        msg = "boom is not a word"
        raise ValueError(msg)
    total.count += 1
    return f"{w} => {total.count}"


@wl.computation(name="upper")
def upper(s):
    return s.upper()


@wl.encoder
def line(s):
    return f"{s}\n"


def word_count() -> Application:
    pipeline = (wl.source("lines", wl.StreamSource()).to(split).key_by(word).to(count)
                .to_sink(wl.StreamSink("counts", encoder=line)))
    return wl.build_application("word count", pipeline)


def two_sources() -> Application:
    a = wl.source("a", wl.StreamSource())
    b = wl.source("b", wl.StreamSource())
    return wl.build_application("two", a.merge(b).to(upper).to_sink(wl.StreamSink("out")))


def test_run_a_list_of_records() -> None:
    result = testing.run(word_count(), ["hello world", b"hello"])

    assert sorted(result.lines("counts")) == ["hello => 1", "hello => 2", "world => 1"]
    assert result.dead_letters == []


def test_per_key_order_is_kept() -> None:
    result = testing.run(word_count(), ["a b", "a", "b a"])

    assert [x for x in result.lines() if x.startswith("a")] == ["a => 1", "a => 2", "a => 3"]


def test_run_a_dict_of_records_per_source() -> None:
    result = testing.run(two_sources(), {"a": ["x"], "b": ["y", "z"]})

    assert sorted(result.lines()) == ["X", "Y", "Z"]


def test_run_source_record_pairs_in_the_given_order() -> None:
    result = testing.run(two_sources(), [("b", "y"), ("a", "x"), ("b", "z")])

    assert result.lines() == ["Y", "X", "Z"]


def test_several_sources_need_named_inputs() -> None:
    with pytest.raises(ValueError, match="several sources"):
        testing.run(two_sources(), ["x"])


def test_failing_user_code_goes_to_dead_letters_and_the_rest_flows() -> None:
    result = testing.run(word_count(), ["hello boom world"])

    assert sorted(result.lines()) == ["hello => 1", "world => 1"]
    [letter] = result.dead_letters
    assert (letter.step, letter.reason, letter.attempts, letter.key) == (
        "count", "user_error", 3, "boom")
    assert "boom is not a word" in letter.error
    assert codec.loads(letter.payload) == "boom"


def test_a_failure_in_a_batch_does_not_lose_the_other_records() -> None:
    result = testing.run(word_count(), ["a", b"\xff", "b"], batch_size=3)

    assert sorted(result.lines()) == ["a => 1", "b => 1"]
    assert [d.payload for d in result.dead_letters] == [b"\xff"]


def test_undecodable_input_is_dead_lettered_with_its_bytes() -> None:
    result = testing.run(word_count(), [b"\xff", "ok"])

    assert result.lines() == ["ok => 1"]
    [letter] = result.dead_letters
    assert (letter.step, letter.reason, letter.payload) == ("decoder", "decode_error", b"\xff")


def test_the_fake_clock_moves_by_the_retry_backoff() -> None:
    default = testing.run(word_count(), ["boom"])
    custom = testing.run(word_count(), ["boom"],
                         retry=RetryPolicy(attempts=4, backoff=1.0, factor=3.0, max_delay=5.0))

    assert default.clock.now == pytest.approx(0.05 + 0.2)
    assert custom.clock.now == pytest.approx(1.0 + 3.0 + 5.0)
    assert testing.run(word_count(), ["fine"]).clock.now == 0.0


def test_fake_clock_advance() -> None:
    clock = testing.FakeClock()
    clock.advance(1.5)
    clock.advance(2.0)

    assert clock.now == 3.5


def test_raw_keeps_the_encoded_bytes_and_lines_strips_the_newline() -> None:
    result = testing.run(word_count(), ["hi"])

    assert result.raw() == [b"hi => 1\n"]
    assert result.raw("counts") == result.raw()
    assert result.lines() == ["hi => 1"]


def test_unknown_names_are_refused() -> None:
    result = testing.run(word_count(), ["hi"])

    with pytest.raises(UnknownNameError, match="no sink named 'nope'"):
        result.lines("nope")
    with pytest.raises(UnknownNameError, match="no source named 'nope'"):
        testing.run(word_count(), {"nope": ["x"]})
    with pytest.raises(UnknownNameError, match="its sources are: a, b"):
        testing.run(two_sources(), [("c", "x")])


def test_an_app_with_several_sinks_needs_the_sink_named() -> None:
    pipeline = wl.source("in", wl.StreamSource()).to_sinks(
        [wl.StreamSink("one"), wl.StreamSink("two")])
    result = testing.run(wl.build_application("app", pipeline), ["x"])

    assert result.lines("one") == result.lines("two") == ["x"]
    with pytest.raises(ValueError, match="several sinks"):
        result.lines()


# --- crashes: the same outputs with and without them ------------------------------------------

WORD_COUNT = Path(__file__).resolve().parents[3] / "examples" / "word_count"


def acceptance_lines() -> list[bytes]:
    """The acceptance data (../shared/acceptance/word_count, copied next to the example)."""
    return [line for line in (WORD_COUNT / "count_this.txt").read_bytes().split(b"\n") if line]


def final_counts(lines: list[str]) -> dict[str, int]:
    return {w: int(n) for w, n in (line.rsplit(" => ", 1) for line in lines)}


@pytest.fixture(scope="module")
def clean_run() -> testing.RunResult:
    app, _ = load_app(WORD_COUNT / "word_count.py")
    return testing.run(app, acceptance_lines())


@pytest.mark.parametrize("crash_at", ["append", "publish", "commit"])
@pytest.mark.parametrize("crash_after", [1, 2, 30, 75, "last", (5, 40, 90)])
def test_word_count_gives_the_same_outputs_with_and_without_crashes(
    clean_run: testing.RunResult, crash_after: int | str | tuple[int, ...], crash_at: testing.CrashPoint,
) -> None:
    app, _ = load_app(WORD_COUNT / "word_count.py")
    points = (clean_run.commits,) if crash_after == "last" else crash_after
    assert not isinstance(points, str)

    crashed = testing.run(app, acceptance_lines(), crash_after=points, crash_at=crash_at)

    assert crashed.crashes == (len(points) if isinstance(points, tuple) else 1)
    assert crashed.lines() == clean_run.lines()
    assert len(crashed.lines()) == 482
    expected = json.loads((WORD_COUNT / "expected_final_counts.json").read_text())
    assert final_counts(crashed.lines()) == expected
    assert crashed.states == clean_run.states
    assert crashed.commits == clean_run.commits  # no committed input ran twice


def test_a_crash_after_every_commit_changes_nothing_dead_letters_included() -> None:
    inputs = ["a boom b", "b a", "boom"]
    clean = testing.run(word_count(), inputs)
    every = range(1, clean.commits + 1)
    points: tuple[testing.CrashPoint, ...] = ("append", "publish", "commit")

    for point in points:
        crashed = testing.run(word_count(), inputs, crash_after=every, crash_at=point)
        assert crashed.crashes == clean.commits
        assert crashed.lines() == clean.lines()
        # The same letters (not the same record ids: an output republished after a crash is
        # a second message, skipped downstream, that takes a stream seq; see names.tagged).
        letters = [(d.key, d.payload, d.stage) for d in crashed.dead_letters]
        assert letters == [(d.key, d.payload, d.stage) for d in clean.dead_letters]
        assert len(crashed.dead_letters) == 2


def test_a_crash_past_the_last_commit_does_not_happen_and_says_so() -> None:
    result = testing.run(word_count(), ["a"], crash_after=50)

    assert (result.commits, result.crashes, result.lines()) == (2, 0, ["a => 1"])
    with pytest.raises(ValueError, match="counts commits from 1"):
        testing.run(word_count(), ["a"], crash_after=0)
