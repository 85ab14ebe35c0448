"""Count and range windows (Wallaroo 0.6's Aggregation API) and Reject, run in-process through
wallaroo.testing with the runner's engine."""

from __future__ import annotations

from typing import Any

import pytest

import wallaroo as wl
from wallaroo import testing
from wallaroo.core import codec
from wallaroo.core.errors import DefinitionError, PipelineError


class Sum(wl.Aggregation):
    """Sums the amount of "user,amount[,time]" records; counts combines to prove panes merge."""

    def initial_accumulator(self) -> list[float]:
        return [0.0, 0]  # total, records

    def update(self, record: tuple[str, float, float], acc: list[float]) -> list[float]:
        acc[0] += record[1]
        acc[1] += 1
        return acc

    def combine(self, a: list[float], b: list[float]) -> list[float]:
        return [a[0] + b[0], a[1] + b[1]]

    def output(self, key: str, acc: list[float]) -> str:
        return f"{key} {acc[0]:g} over {acc[1]:g}"


@wl.decoder
def parse(data: bytes) -> tuple[str, float, float]:
    user, amount, *t = data.decode().split(",")
    return user, float(amount), float(t[0]) if t else 0.0


@wl.key_extractor
def user(record: tuple[str, float, float]) -> str:
    return record[0]


def at(record: tuple[str, float, float]) -> float:
    return record[2]


def app_with(step: Any) -> wl.Application:
    pipeline = (wl.source("in", wl.StreamSource(decoder=parse)).key_by(user).to(step)
                .to_sink(wl.StreamSink("out", encoder=lambda s: s + "\n")))
    return wl.build_application("windows", pipeline, partitions=4)


def test_count_windows_emit_every_n_records_per_key() -> None:
    app = app_with(wl.count_windows(3).over(Sum))
    inputs = ["a,1", "b,10", "a,2", "a,3", "b,20", "a,4", "a,5", "b,30", "a,6", "a,7"]
    assert testing.run(app, inputs).lines() == ["a 6 over 3", "b 60 over 3", "a 15 over 3"]


def test_tumbling_range_windows_close_on_the_keys_event_time() -> None:
    app = app_with(wl.range_windows(wl.seconds(10)).with_timestamp(at).over(Sum))
    inputs = ["a,1,0", "a,2,9.5", "b,5,3", "a,3,10", "a,4,25", "b,6,31"]
    # a: [0,10) closes at a's t=10; [10,20) at t=25 ([20,30) stays open); b: [0,10) at t=31
    assert testing.run(app, inputs).lines() == ["a 3 over 2", "a 3 over 1", "b 5 over 1"]


def test_sliding_windows_combine_panes_and_hold_each_record_in_each_window() -> None:
    app = app_with(wl.range_windows(10).with_slide(5).with_timestamp(at).over(Sum))
    inputs = ["k,1,1", "k,2,6", "k,4,12", "k,8,17", "k,0,30"]
    # windows [-5,5) [0,10) [5,15) [10,20) [15,25), closed by t=30 (empty ones emit nothing)
    assert testing.run(app, inputs).lines() == [
        "k 1 over 1", "k 3 over 2", "k 6 over 2", "k 12 over 2", "k 8 over 1"]


def test_out_of_order_within_the_delay_counts_and_a_late_record_is_dead_lettered_once() -> None:
    app = app_with(wl.range_windows(10).with_delay(5).with_timestamp(at).over(Sum))
    inputs = ["k,1,1", "k,2,12", "k,4,8", "k,8,16", "k,100,3", "k,0,40"]
    result = testing.run(app, inputs)
    # t=8 arrived after t=12 but within the 5 s delay; t=3 came after [0,10) was emitted (t=16)
    assert result.lines() == ["k 5 over 2", "k 10 over 2"]
    [late] = result.dead_letters
    assert late.attempts == 1 and "LateRecord" in late.error and "with_delay" in late.error
    assert codec.loads(late.payload) == ("k", 100.0, 3.0)  # the decoded record, for a replay


def test_a_gap_in_event_time_skips_the_empty_windows() -> None:
    app = app_with(wl.range_windows(wl.milliseconds(1)).with_timestamp(at).over(Sum))
    assert testing.run(app, ["k,1,0", "k,2,1e9", "k,0,2e9"]).lines() == [
        "k 1 over 1", "k 2 over 1"]


def test_a_window_output_of_none_emits_nothing() -> None:
    class Quiet(Sum):
        def output(self, key: str, acc: list[float]) -> str | None:
            return None if acc[0] < 10 else super().output(key, acc)

    app = app_with(wl.count_windows(1).over(Quiet))
    assert testing.run(app, ["a,1", "a,12", "a,3"]).lines() == ["a 12 over 1"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: wl.count_windows(0), "whole number of records >= 1"),
    (lambda: wl.count_windows(2).over(object), "wallaroo.Aggregation subclass"),
    (lambda: wl.range_windows(10).over(Sum), "with_timestamp"),
    (lambda: wl.range_windows(10).with_slide(3).with_timestamp(at).over(Sum), "whole multiple"),
    (lambda: wl.range_windows(10).with_delay(-1).with_timestamp(at).over(Sum), "delay >= 0"),
])
def test_window_mistakes_fail_at_build_time_naming_the_fix(make: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        make()


def test_reject_dead_letters_at_once_without_retries() -> None:
    @wl.computation(name="check")
    def check(record: tuple[str, float, float]) -> str:
        if record[1] < 0:
            msg = f"negative amount {record[1]}"
            raise wl.Reject(msg)
        return record[0]

    pipeline = (wl.source("in", wl.StreamSource(decoder=parse)).to(check)
                .to_sink(wl.StreamSink("out", encoder=lambda s: s + "\n")))
    result = testing.run(wl.build_application("rejects", pipeline), ["a,1", "b,-2", "c,3"])
    assert result.lines() == ["a", "c"]
    [dead] = result.dead_letters
    assert (dead.attempts, dead.step, dead.error) == (1, "check", "Reject: negative amount -2.0")
    assert result.clock.now == 0.0  # no backoff was waited


def test_a_new_keys_first_records_may_arrive_out_of_order_within_the_delay() -> None:
    app = app_with(wl.range_windows(60).with_delay(5).with_timestamp(at).over(Sum))
    result = testing.run(app, ["k,1,62", "k,2,59", "k,0,130"])
    assert result.dead_letters == []
    assert result.lines() == ["k 2 over 1", "k 1 over 1"]  # [0,60) then [60,120)


def test_a_record_late_for_some_sliding_windows_counts_in_the_open_ones_only() -> None:
    app = app_with(wl.range_windows(60).with_slide(10).with_timestamp(at).over(Sum))
    result = testing.run(app, ["k,1,5", "k,2,75", "k,4,58", "k,0,200"])
    assert result.dead_letters == []
    # t=5 alone in the 6 windows ending by 75; t=58 missed [0,60) and [10,70), emitted at
    # t=75, and counts in [20,80) .. [50,110) with t=75; then t=75 alone in [60,120), [70,130)
    assert result.lines() == ["k 1 over 1"] * 6 + ["k 6 over 2"] * 4 + ["k 2 over 1"] * 2


# --- end of input (a job's bounded sources) ----------------------------------------------------


def test_at_end_of_input_count_windows_emit_their_partial_window() -> None:
    app = app_with(wl.count_windows(3).over(Sum))
    inputs = ["a,1", "b,10", "a,2", "a,3", "b,20", "a,4", "c,100"]
    streaming = testing.run(app, inputs).lines()
    assert streaming == ["a 6 over 3"]  # endless input: the rest waits
    ended = testing.run(app, inputs, end_of_input=True).lines()
    assert ended[:1] == streaming
    assert sorted(ended[1:]) == ["a 4 over 1", "b 30 over 2", "c 100 over 1"]


def test_at_end_of_input_every_open_range_window_is_emitted_once() -> None:
    app = app_with(wl.range_windows(wl.seconds(10)).with_slide(wl.seconds(5))
                   .with_timestamp(at).over(Sum))
    inputs = ["a,1,1", "a,2,7", "a,4,12", "b,8,3"]
    ended = testing.run(app, inputs, end_of_input=True).lines()
    # Windows [-5,5) [0,10) [5,15) [10,20) for a; [-5,5) [0,10) for b: all open at the end.
    assert sorted(ended) == sorted(["a 1 over 1", "a 3 over 2", "a 6 over 2", "a 4 over 1",
                                    "b 8 over 1", "b 8 over 1"])


def test_the_end_of_input_flush_survives_crashes_exactly_once() -> None:
    app = app_with(wl.count_windows(4).over(Sum))
    inputs = [f"{k},{i}" for i in range(30) for k in "abcde"]
    expected = sorted(testing.run(app, inputs, batch_size=7, end_of_input=True).lines())
    commits = testing.run(app, inputs, batch_size=7, end_of_input=True).commits
    assert len(expected) == 5 * 8  # 7 full windows and one partial per key
    for crash in (commits - 2, commits - 1, commits):
        for point in ("append", "publish", "commit"):
            run = testing.run(app, inputs, batch_size=7, end_of_input=True, crash_after=crash,
                              crash_at=point)  # type: ignore[arg-type]
            assert sorted(run.lines()) == expected, (crash, point)


# --- global windows: one per key over a job's whole input, combined ahead of the key_by -----


@wl.computation_multi(name="records of a line")
def records_of(line: str) -> list[tuple[str, float, float]]:
    return [parse(r.encode()) for r in line.split()]


def job_with(step: Any, partitions: int = 4) -> wl.Application:
    """Lines of "user,amount" records, split ahead of the key_by (a bounded source: a job)."""
    pipeline = (wl.source("in", wl.FileSource("unused.txt", bounded=True)).to(records_of)
                .key_by(user).to(step).to_sink(wl.StreamSink("out", encoder=lambda s: s + "\n")))
    return wl.build_application("totals", pipeline, partitions=partitions)


def job_lines(n: int) -> list[str]:
    return [" ".join(f"{'abcdefg'[(i * 3 + j) % 7]},{i % 5 + j}" for j in range(4)) for i in range(n)]


def expected_totals(lines: list[str]) -> list[str]:
    sums: dict[str, list[float]] = {}
    for r in (r for line in lines for r in line.split()):
        k, amount = r.split(",")
        acc = sums.setdefault(k, [0.0, 0])
        acc[0], acc[1] = acc[0] + float(amount), acc[1] + 1
    return sorted(f"{k} {a[0]:g} over {a[1]:g}" for k, a in sums.items())


@pytest.mark.parametrize("batch_size", [1, 3, 50])
def test_global_windows_emit_one_total_per_key_at_end_of_input(batch_size: int) -> None:
    lines = job_lines(40)
    app = job_with(wl.global_windows().over(Sum))
    assert testing.run(app, lines, batch_size=batch_size).lines() == []  # not before the end
    ended = testing.run(app, lines, batch_size=batch_size, end_of_input=True)
    assert sorted(ended.lines()) == expected_totals(lines)
    assert ended.dead_letters == []


def test_the_stage_before_a_global_window_sends_one_partial_per_key_and_batch() -> None:
    from wallaroo.api import Partial
    from wallaroo.core.engine import Batch, StageEngine

    app = job_with(wl.global_windows().over(Sum))
    lines = job_lines(20)
    batch = Batch()
    batch.add(1, [None] * len(lines), [line.encode() for line in lines])
    result = StageEngine(app, app.stages[0]).attempt(batch, {}, {})
    routed = [(k, v) for keys, vals in result.routed.values() for k, v in zip(keys, vals, strict=True)]
    assert sorted(k for k, _ in routed) == sorted("abcdefg")  # one value per key, not 80 records
    assert all(type(v) is Partial for _, v in routed)
    assert sum(v.acc[1] for _, v in routed) == 80  # every record folded in once


def test_a_failing_update_ahead_of_the_key_by_dead_letters_the_record_it_failed_on() -> None:
    class Picky(Sum):
        def update(self, record: tuple[str, float, float], acc: list[float]) -> list[float]:
            if record[1] == 99:
                raise ValueError("99 is not an amount")
            return super().update(record, acc)

    lines = ["a,1 b,2", "a,99 c,3", "c,4"]
    result = testing.run(job_with(wl.global_windows().over(Picky)), lines, batch_size=3,
                         end_of_input=True)
    [dead] = result.dead_letters
    assert (dead.stage, dead.step) == ("in", "global_windows over Picky")
    assert dead.payload == b"a,99 c,3" and "99 is not an amount" in dead.error
    assert sorted(result.lines()) == ["a 1 over 1", "b 2 over 1", "c 4 over 1"]


@pytest.mark.parametrize("empty_gives_b", [False, True], ids=["into_a", "b_when_a_empty"])
def test_a_keyed_batch_run_again_combines_each_partial_once(empty_gives_b: bool) -> None:
    """The worker runs a batch's decoded values again after a retry or a split: an in-place
    combine must not have changed the partials it holds, whichever object it returns."""
    from wallaroo.api import Partial
    from wallaroo.core.engine import Batch, StageEngine

    class Collect(wl.Aggregation):
        def initial_accumulator(self) -> list[int]:
            return []

        def update(self, record: tuple[str, float, float], acc: list[int]) -> list[int]:
            acc.append(int(record[1]))
            return acc

        def combine(self, a: list[int], b: list[int]) -> list[int]:
            if empty_gives_b and not a:
                return b
            a.extend(b)  # in place, as Aggregation allows
            return a

        def output(self, key: str, acc: list[int]) -> str:
            return f"{key} {sorted(acc)}"

    app = job_with(wl.global_windows().over(Collect))
    batch = Batch()
    batch.add(1, ["a"] * 4, [Partial([]), Partial([1]), Partial([2]), Partial([3])])
    engine = StageEngine(app, app.stages[1])
    first, again = (engine.attempt(batch, {}, {}).states for _ in range(2))
    assert [codec.load_state(v).acc for v in again.values()] == [[1, 2, 3]]
    assert again == first


def test_records_checked_one_by_one_cross_uncombined() -> None:
    """After a batch could not commit, outputs are checked one by one: a partial too big to
    send must not dead-letter records that each fit (they cross the key_by as they are)."""
    from wallaroo.core.engine import Batch, StageEngine

    class Padded(Sum):
        def update(self, record: tuple[str, float, float], acc: Any) -> Any:
            return [*acc, str(record[1]) * 100]  # 300 characters of its own

    app = job_with(wl.global_windows().over(Padded))
    batch = Batch()
    batch.add(1, [None], [b"a,1 a,2 a,3 a,4"])
    engine = StageEngine(app, app.stages[0])
    [(_, combined)] = engine.attempt(batch, {}, {}).routed.values()
    assert len(codec.dumps(combined[0])) > 1000  # one partial of the four
    checked = engine.attempt(batch, {}, {}, check_outputs=1000)
    assert [v[1] for _, vals in checked.routed.values() for v in vals] == [1.0, 2.0, 3.0, 4.0]


def test_global_windows_survive_crashes_exactly_once() -> None:
    app = job_with(wl.global_windows().over(Sum))
    lines = job_lines(60)
    commits = testing.run(app, lines, batch_size=7, end_of_input=True).commits
    for crash in (3, commits // 2, commits - 1, commits):
        for point in ("append", "publish", "commit"):
            run = testing.run(app, lines, batch_size=7, end_of_input=True, crash_after=crash,
                              crash_at=point)  # type: ignore[arg-type]
            assert sorted(run.lines()) == expected_totals(lines), (crash, point)


def test_global_windows_are_refused_where_input_never_ends() -> None:
    with pytest.raises(PipelineError, match="bounded=True"):
        app_with(wl.global_windows().over(Sum))


def test_a_failing_combine_dead_letters_the_partial_and_keeps_the_other_keys() -> None:
    class BadCombine(Sum):
        def combine(self, a: list[float], b: list[float]) -> list[float]:
            if b[0] >= 100:
                raise ValueError("too much to combine")
            return super().combine(a, b)

    lines = ["a,1 b,2", "a,100 b,3", "b,4"]  # batches of one line: a's second partial fails
    result = testing.run(job_with(wl.global_windows().over(BadCombine)), lines, end_of_input=True)
    [dead] = result.dead_letters
    assert (dead.step, dead.key) == ("global_windows over BadCombine", "a")
    assert "too much to combine" in dead.error
    assert codec.loads(dead.payload).acc == [100.0, 1]  # the partial, as `dlq replay` resends it
    assert sorted(result.lines()) == ["a 1 over 1", "b 9 over 3"]


def test_no_combining_ahead_when_steps_may_call_functions() -> None:
    """A function call's id comes from the record whose step makes it: `update` must run in
    the keyed step, record by record, when the app's steps may call functions."""
    import dataclasses

    from wallaroo.core.engine import Batch, StageEngine

    app = dataclasses.replace(job_with(wl.global_windows().over(Sum)), calls=True)
    batch = Batch()
    batch.add(1, [None], [b"a,1 a,2 b,3"])
    result = StageEngine(app, app.stages[0]).attempt(batch, {}, {})
    routed = [v for _, vals in result.routed.values() for v in vals]
    assert sorted(routed) == [("a", 1.0, 0.0), ("a", 2.0, 0.0), ("b", 3.0, 0.0)]
