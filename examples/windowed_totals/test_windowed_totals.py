"""The windowed_totals example: per user, one total per minute of event time, emitted in order
once the user's records are 10 s past the minute; checked against a plain Python reference."""

import math
from collections import defaultdict
from pathlib import Path

import pytest

import wallaroo.testing
from wallaroo.control import ingest
from wallaroo.core import packaging

HERE = Path(__file__).parent
APP_FILE = HERE / "windowed_totals.py"
INPUT = HERE / "txns.txt"
DELAY = 10.0


def load_app():
    return packaging.load_app(APP_FILE)[0]


def records():
    return list(ingest.file_lines(INPUT))


def expected_by_user():
    """Every minute that holds a user's records and ends by their newest time minus the delay."""
    minutes = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    newest = defaultdict(lambda: -math.inf)
    for rec in records():
        user, cents, at = rec.decode().split(",")
        acc = minutes[user][math.floor(float(at) / 60)]
        acc[0] += int(cents)
        acc[1] += 1
        newest[user] = max(newest[user], float(at))
    return {user: [f"{user} {c} cents in {n} transaction(s)"
                   for m, (c, n) in sorted(by_minute.items()) if (m + 1) * 60 <= newest[user] - DELAY]
            for user, by_minute in minutes.items()}


def by_user(lines):
    grouped = defaultdict(list)
    for line in lines:
        grouped[line.split()[0]].append(line)
    return dict(grouped)


def test_the_input_is_out_of_order_but_within_the_delay():
    times = [float(r.decode().split(",")[2]) for r in records()]
    assert any(b < a for a, b in zip(times, times[1:], strict=False))  # out of order...
    assert max(max(times[: i + 1]) - t for i, t in enumerate(times)) < DELAY  # ...but not late
    assert sum(len(v) for v in expected_by_user().values()) > 50


@pytest.mark.parametrize("batch_size", [1, 16])
def test_one_total_per_user_minute_in_order(batch_size):
    result = wallaroo.testing.run(load_app(), records(), batch_size=batch_size)
    assert result.dead_letters == []
    assert by_user(result.lines("minutes")) == expected_by_user()


@pytest.mark.integration
def test_on_runners(run_on_runner):
    outputs = run_on_runner(APP_FILE, [("txns", r) for r in records()], runners=2)
    assert by_user(outputs["minutes"]) == expected_by_user()
