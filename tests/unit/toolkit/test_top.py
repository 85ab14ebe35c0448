"""wallaroo.control.top: the frames of `wallaroo top`, rates from two samples."""

from __future__ import annotations

from wallaroo.control.top import NO_RATE, Frame, Sample, frame
from wallaroo.core.observe import StageLag
from wallaroo.core.wire import AppReport, Heartbeat, Manifest, PartitionReport

WC = Manifest("wc", "wc", "v1", "3.11", "3.1", 2, [], [], [], created=1.0)


def report(records: int, commits: int) -> PartitionReport:
    return PartitionReport(commits, records, 0, 1, 0, 0.0, 0.0)


def beat(runner: str, ts: float, parts: dict[tuple[int, int], PartitionReport],
         metrics: str = "") -> Heartbeat:
    return Heartbeat(runner, 1, "h", 0.0, ts, 0, {"wc": AppReport("v1", 0, parts, {})}, {},
                     metrics=metrics)


def sample(at: float, lag: int, *beats: Heartbeat) -> Sample:
    stages = [StageLag("wc", 0, "split", lag, 0, 1), StageLag("wc", 1, "count", 0, 0, 2)]
    return Sample(at, [(WC, stages)], list(beats), leader="r0")


def test_one_sample_shows_no_rates() -> None:
    now = sample(10.0, 5, beat("r0", 100.0, {(0, 0): report(50, 5)}, "127.0.0.1:9000"))

    f = frame(now, wall=lambda: 101.5)

    assert f.apps == [["wc", "v1", "0", "split", "1", "5", NO_RATE, NO_RATE],
                      ["wc", "v1", "1", "count", "2", "0", NO_RATE, NO_RATE]]
    assert f.runners == [["r0", "leader", "1", NO_RATE, NO_RATE, "1.5s ago",
                          "http://127.0.0.1:9000/metrics"]]


def test_rates_are_counter_differences_over_the_time_between_heartbeats() -> None:
    """r0's counters over its two beats 2 s apart; r1's over 1 s; the lag over the 4 s
    between the samples (draining: negative)."""
    before = sample(10.0, 100,
                    beat("r0", 100.0, {(0, 0): report(50, 5), (1, 0): report(0, 0)}),
                    beat("r1", 100.0, {(1, 1): report(10, 1)}))
    now = sample(14.0, 60,
                 beat("r0", 102.0, {(0, 0): report(250, 9), (1, 0): report(40, 2)}),
                 beat("r1", 101.0, {(1, 1): report(40, 4)}))

    f = frame(now, before, wall=lambda: 102.0)

    assert [row[5:] for row in f.apps] == [["60", "-10", "100"], ["0", "+0", "50"]]
    # runner rows: commits/s, records/s, no metrics served
    assert [row[3:5] + row[6:] for row in f.runners] == [["3", "120", "-"], ["3", "30", "-"]]


def test_a_restarted_worker_or_a_beat_that_did_not_move_gives_no_rate() -> None:
    before = sample(10.0, 0, beat("r0", 100.0, {(0, 0): report(500, 50)}),
                    beat("r1", 100.0, {(1, 1): report(10, 1)}))
    now = sample(11.0, 0, beat("r0", 101.0, {(0, 0): report(20, 2)}),  # counters began again
                 beat("r1", 100.0, {(1, 1): report(10, 1)}))  # the same beat, read twice

    f = frame(now, before)

    assert [row[7] for row in f.apps] == [NO_RATE, NO_RATE]
    assert [row[3:5] for row in f.runners] == [[NO_RATE, NO_RATE], [NO_RATE, NO_RATE]]


def test_the_text_frame_says_when_there_is_nothing_to_show() -> None:
    assert Frame([], []).text() == "no apps deployed\n\nno runners"
