"""wallaroo.core.engine: one batch through one stage, pure; retries and dead letters as data."""

import zlib

import pytest

import wallaroo as wl
from wallaroo.api import text_encoder
from wallaroo.core import codec
from wallaroo.core.engine import (
    DeadLetter,
    Item,
    RecordFailed,
    Retrier,
    RetryPolicy,
    StageEngine,
    state_slot,
)
from wallaroo.plan import Application


class Total:
    made = 0

    def __init__(self) -> None:
        Total.made += 1
        self.count = 0


@wl.decoder
def decode_int(b):
    return int(b)


@wl.computation(name="keep even")
def keep_even(n):
    return n if n % 2 == 0 else None


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
    return f"{w}={total.count}"


def engine(app: Application, stage: int = 0) -> StageEngine:
    return StageEngine(app, app.stages[stage])


def raw(*records: bytes) -> list[Item]:
    return [Item((seq, 0), None, r) for seq, r in enumerate(records, start=1)]


def keyed(*words: str) -> list[Item]:
    return [Item((seq, 0), w, w) for seq, w in enumerate(words, start=1)]


def word_count(partitions: int = 4) -> Application:
    pipeline = (wl.source("lines", wl.StreamSource()).to(split).key_by(word).to(count)
                .to_sink(wl.StreamSink("out")))
    return wl.build_application("wc", pipeline, partitions=partitions)


def evens_app(encoder=text_encoder) -> Application:
    pipeline = (wl.source("n", wl.StreamSource(decoder=decode_int)).to(keep_even)
                .to_sink(wl.StreamSink("out", encoder=encoder)))
    return wl.build_application("evens", pipeline)


def test_none_drops_the_record() -> None:
    result = engine(evens_app()).attempt(raw(b"1", b"2", b"3", b"4"), {}, {})

    assert result.sink_out == {0: [b"2", b"4"]}
    assert result.records_in == 4
    assert result.dead == []


def test_multi_fans_out_and_routes_each_word_by_its_key() -> None:
    result = engine(word_count()).attempt(raw(b"a b a"), {}, {})

    expected: dict[int, tuple[list[str], list[str]]] = {}
    for w in ["a", "b", "a"]:
        keys, values = expected.setdefault(codec.partition_of(w, 4), ([], []))
        keys.append(w)
        values.append(w)
    assert result.routed == expected
    assert result.sink_out == {}


def test_one_state_per_key_made_on_first_sight() -> None:
    Total.made = 0
    app = word_count()

    result = engine(app, 1).attempt(keyed("a", "b", "a"), {}, {})

    assert result.sink_out == {0: [b"a=1", b"b=1", b"a=2"]}
    assert Total.made == 2
    step = app.stages[1].steps[0]
    assert set(result.states) == {state_slot(step, "a"), state_slot(step, "b")}


def test_state_persists_through_the_bytes_table_across_batches() -> None:
    app = word_count()
    eng = engine(app, 1)
    table: dict[str, bytes] = {}

    table.update(eng.attempt(keyed("a", "a"), table, {}).states)
    Total.made = 0
    second = eng.attempt(keyed("a"), table, {})

    assert second.sink_out == {0: [b"a=3"]}
    assert Total.made == 0
    assert codec.load_state(second.states[state_slot(app.stages[1].steps[0], "a")]).count == 3


def test_a_failing_record_names_its_step_and_leaves_the_table_untouched() -> None:
    app = word_count()
    eng = engine(app, 1)
    table = eng.attempt(keyed("a"), {}, {}).states
    before = dict(table)

    with pytest.raises(RecordFailed) as err:
        eng.attempt(keyed("a", "boom"), table, {})

    failed = err.value
    assert (failed.step, failed.reason, failed.item.rid) == ("count", "user_error", (2, 0))
    assert "step 'count'" in str(failed)
    assert failed.error == "ValueError: boom is not a word"
    assert table == before
    assert codec.load_state(table[state_slot(app.stages[1].steps[0], "a")]).count == 1


def test_records_in_skip_are_dead_lettered_and_the_rest_processed() -> None:
    items = raw(b"2", b"x", b"4")
    letter = DeadLetter("n", "decoder", "decode_error", "ValueError", "tb", 3, None, b"x", (2, 0))

    result = engine(evens_app()).attempt(items, {}, {(2, 0): letter})

    assert result.dead == [letter]
    assert result.sink_out == {0: [b"2", b"4"]}


def test_decoder_errors_have_reason_decode_error() -> None:
    with pytest.raises(RecordFailed) as err:
        engine(evens_app()).attempt(raw(b"not a number"), {}, {})

    assert (err.value.step, err.value.reason) == ("decoder", "decode_error")


def test_a_key_extractor_returning_a_non_str_is_a_clear_error() -> None:
    @wl.key_extractor
    def by_length(w):
        return len(w)

    pipeline = (wl.source("in", wl.StreamSource()).key_by(by_length).to(count)
                .to_sink(wl.StreamSink("out")))
    eng = engine(wl.build_application("app", pipeline))

    with pytest.raises(RecordFailed) as err:
        eng.attempt(raw(b"abc"), {}, {})

    assert "key_extractor must return str" in err.value.error
    assert "got int" in err.value.error


def test_bytes_keys_are_accepted() -> None:
    @wl.key_extractor
    def raw_key(w):
        return w.encode()

    pipeline = (wl.source("in", wl.StreamSource()).key_by(raw_key).to(count)
                .to_sink(wl.StreamSink("out")))
    result = engine(wl.build_application("app", pipeline, partitions=8)).attempt(
        raw(b"hello"), {}, {})

    assert result.routed == {6: (["hello"], ["hello"])}


def test_encoder_must_return_bytes_or_str() -> None:
    as_text = engine(evens_app(encoder=lambda n: f"{n}\n")).attempt(raw(b"2"), {}, {})
    assert as_text.sink_out == {0: ["2\n"]}  # str is kept; it travels as UTF-8

    with pytest.raises(RecordFailed) as err:
        engine(evens_app(encoder=lambda n: n)).attempt(raw(b"2"), {}, {})
    assert (err.value.step, err.value.reason) == ("encoder", "output_error")
    assert "encoder must return bytes or str, got int" in err.value.error


def test_multi_step_must_return_a_list() -> None:
    @wl.computation_multi(name="not a list")
    def bad(x):
        return x

    pipeline = wl.source("in", wl.StreamSource()).to(bad).to_sink(wl.StreamSink("out"))

    with pytest.raises(RecordFailed, match="must return a list"):
        engine(wl.build_application("app", pipeline)).attempt(raw(b"x"), {}, {})


def failure(rid: tuple[int, int] = (7, 0)) -> RecordFailed:
    with pytest.raises(ValueError) as err:
        int("x")
    return RecordFailed(Item(rid, "k", b"x"), "parse", "user_error", err.value)


def test_retry_backoff_grows_then_caps() -> None:
    policy = RetryPolicy(attempts=6, backoff=1.0, factor=2.0, max_delay=5.0)
    retrier = Retrier(policy, "stage")

    delays = [retrier.on_failure(failure()) for _ in range(5)]

    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert retrier.dead == {}


def test_dead_letter_after_the_last_attempt() -> None:
    retrier = Retrier(RetryPolicy(attempts=3), "lines", raw=True)

    delays = [retrier.on_failure(failure()) for _ in range(3)]

    assert delays[-1] == 0.0
    letter = retrier.dead[(7, 0)]
    assert (letter.stage, letter.step, letter.reason, letter.attempts) == (
        "lines", "parse", "user_error", 3)
    assert (letter.key, letter.payload, letter.rid) == ("k", b"x", (7, 0))
    assert letter.error.startswith("ValueError: invalid literal")
    assert "Traceback" in letter.traceback and "int(\"x\")" in letter.traceback


def test_failures_are_counted_per_record() -> None:
    retrier = Retrier(RetryPolicy(attempts=2), "s")

    retrier.on_failure(failure((1, 0)))
    retrier.on_failure(failure((2, 0)))

    assert retrier.dead == {}
    assert retrier.on_failure(failure((1, 0))) == 0.0
    assert list(retrier.dead) == [(1, 0)]


def test_dead_letter_wire_round_trip() -> None:
    letter = failure().dead_letter("stage", 3)

    assert DeadLetter.from_wire(letter.to_wire()) == letter


def test_partition_of_is_stable_and_in_range() -> None:
    assert codec.partition_of("hello", 8) == zlib.crc32(b"hello") % 8 == 6
    keys = [f"key{i}" for i in range(200)]
    first = [codec.partition_of(k, 7) for k in keys]
    assert first == [codec.partition_of(k, 7) for k in keys]
    assert set(first) == set(range(7))


def _lock_app() -> wl.Application:
    import threading

    @wl.computation(name="to lock")
    def to_lock(text):
        return threading.Lock() if text == "lock" else text

    @wl.key_extractor
    def same(value):
        return "k"

    pipeline = (wl.source("in", wl.StreamSource()).to(to_lock).key_by(same).to(count)
                .to_sink(wl.StreamSink("out")))
    return wl.build_application("locks", pipeline)


def test_checking_outputs_names_the_record_that_cannot_be_serialized() -> None:
    eng = engine(_lock_app())
    assert eng.attempt(raw(b"a", b"lock"), {}, {}).routed  # unchecked: pickling happens later

    with pytest.raises(RecordFailed) as err:
        eng.attempt(raw(b"a", b"lock"), {}, {}, check_outputs=1 << 20)
    assert err.value.item.rid == (2, 0)
    assert (err.value.step, err.value.reason) == ("output", "output_error")


def test_checking_outputs_rejects_an_oversized_one() -> None:
    with pytest.raises(RecordFailed, match="larger than the 10-byte limit"):
        engine(evens_app(encoder=lambda n: "x" * n)).attempt(raw(b"2", b"40"), {}, {},
                                                             check_outputs=10)


def test_a_state_that_cannot_be_pickled_fails_the_record_that_made_it() -> None:
    import threading

    class Locked:
        def __init__(self):
            self.lock = threading.Lock()

    @wl.state_computation(name="locked", state=Locked)
    def locked(word, state):
        return word

    @wl.key_extractor
    def word(w):
        return w

    pipeline = (wl.source("in", wl.StreamSource()).key_by(word).to(locked)
                .to_sink(wl.StreamSink("out")))
    with pytest.raises(RecordFailed) as err:
        engine(wl.build_application("s", pipeline), 1).attempt(keyed("a"), {}, {})
    assert (err.value.step, err.value.reason) == ("locked", "state_error")


def test_a_state_that_does_not_load_fails_the_first_record_of_its_key() -> None:
    app = word_count()
    eng = engine(app, 1)
    table = {state_slot(app.stages[1].steps[0], "b"): b"not a pickle"}

    with pytest.raises(RecordFailed) as err:
        eng.attempt(keyed("a", "b", "a", "b"), table, {})

    assert (err.value.step, err.value.item.rid) == ("count", (2, 0))


def test_of_several_states_that_do_not_load_the_earliest_record_answers() -> None:
    app = word_count()
    eng = engine(app, 1)
    step = app.stages[1].steps[0]
    for keys in (["a", "y", "x", "z"], ["a", "x", "y", "z"], ["a", "z", "x", "y"]):
        table = {state_slot(step, k): b"not a pickle" for k in ("x", "y", "z")}
        with pytest.raises(RecordFailed) as err:
            eng.attempt(keyed(*keys), table, {})
        assert err.value.item.rid == (2, 0), keys


@wl.computation_multi(name="pieces")
def pieces(line):
    """Lists with a None inside, a tuple, and no list at all (None)."""
    return None if line == "-" else ((line, None, line.upper()) if "," in line else [line])


def test_fan_out_drops_none_keeps_order_and_traces_each_output_to_its_record() -> None:
    app = wl.build_application("p", wl.source("in", wl.StreamSource()).to(pieces).to(keep_short)
                               .to_sink(wl.StreamSink("out")))
    eng = engine(app)
    items = [Item((n, 0), None, raw) for n, raw in enumerate([b"x", b"-", b"a,b", b"yy"], 1)]

    assert eng.attempt(items[:3], {}, {}).sink_out == {0: [b"x", b"a,b", b"A,B"]}
    with pytest.raises(RecordFailed) as err:  # "yy" is too long: its record, 4, answers
        eng.attempt(items, {}, {})
    assert err.value.item.rid == (4, 0)


@wl.computation_multi(name="letters")
def letters(word):
    return list(word)


@wl.computation(name="no z")
def no_z(letter):
    if letter == "z":
        raise ValueError("z")
    return letter


@pytest.mark.parametrize("lines", [["ab cd", "", "e fgz h", "ij"], ["z"], ["a b", "c", "dz"]])
def test_a_failure_after_clean_fan_outs_names_the_record_its_value_came_from(lines: list[str]) -> None:
    """Two fan-outs without a None (the path that works out origins only when asked)."""
    app = wl.build_application("f", wl.source("in", wl.StreamSource()).to(split).to(letters)
                               .to(no_z).to_sink(wl.StreamSink("out")))
    items = [Item((n, 0), None, raw.encode()) for n, raw in enumerate(lines, 1)]
    culprit = next(n for n, raw in enumerate(lines, 1) if "z" in raw)

    with pytest.raises(RecordFailed) as err:
        engine(app).attempt(items, {}, {})
    assert err.value.item.rid == (culprit, 0)
    clean = [i for i in items if b"z" not in i.value]
    assert engine(app).attempt(clean, {}, {}).sink_out == {
        0: [c.encode() for i in clean for c in i.value.decode() if c != " "]}


@wl.computation(name="keep short")
def keep_short(s):
    if s == "yy":
        raise ValueError("too long")
    return s


@wl.computation(name="to bytes")
def to_bytes(text):
    return text.encode()


@wl.key_extractor
def first_byte(b):
    return b[:1].decode()


@wl.computation(name="refuse")
def refuse(b):
    raise wl.Reject("no")


def test_a_bytes_value_after_key_by_is_dead_lettered_pickled_so_replay_can_read_it() -> None:
    import wallaroo.testing

    app = wl.build_application("bytes_letters", wl.source("in", wl.StreamSource())
                               .to(to_bytes).key_by(first_byte).to(refuse)
                               .to_sink(wl.StreamSink("out")), partitions=1)

    letters = wallaroo.testing.run(app, ["abc"]).dead_letters

    assert [codec.loads(d.payload) for d in letters] == [b"abc"]  # not b"abc" as a pickle


def test_a_source_record_is_dead_lettered_as_its_bytes() -> None:
    failed = RecordFailed(Item((1, 0), "k", b"\xff"), "decode", "decode_error", ValueError("x"))

    assert failed.dead_letter("lines", 1, raw=True).payload == b"\xff"
    assert codec.loads(failed.dead_letter("s", 1).payload) == b"\xff"


@wl.key_extractor
def raw_key(b):
    return b  # bytes that need not be UTF-8: the key of hostile or binary input


class Seen:
    n = 0


@wl.state_computation(name="seen", state=Seen)
def seen(b, state):
    state.n += 1
    return f"{b!r} {state.n}"


def test_a_key_of_undecodable_bytes_keeps_its_state_across_a_crash() -> None:
    import wallaroo.testing

    app = wl.build_application("raw_keys", wl.source("in", wl.StreamSource(decoder=bytes))
                               .key_by(raw_key).to(seen).to_sink(wl.StreamSink("out")), partitions=1)

    result = wallaroo.testing.run(app, [b"\xff", b"ok", b"\xff"], crash_after=[1, 2])

    assert result.lines() == ["b'\\xff' 1", "b'ok' 1", "b'\\xff' 2"] and not result.dead_letters
