"""The sequence-window validator itself: a correct output passes, and each way an output can
be wrong (gap, duplicate, reorder, missing tail, lost state, junk) is reported by name.
Pure: no processes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sequence_validator import (
    Violation,
    expected_output,
    keys,
    make_input,
    render,
    report,
    validate,
    window,
)

from wallaroo.core.packaging import load_app
from wallaroo.testing import run

K, N = 3, 10
KEYS = keys(K)


def good() -> list[str]:
    return expected_output(K, N)


def kinds(found: list[Violation]) -> list[tuple[str, str | None]]:
    return [(v.kind, v.key) for v in found]


def drop(lines: list[str], line: str) -> list[str]:
    return [x for x in lines if x != line]


def test_a_correct_output_passes() -> None:
    assert validate(good(), KEYS, N) == []


def test_keys_may_interleave_in_any_order() -> None:
    per_key = {k: [x for x in good() if x.startswith(f"{k}:")] for k in KEYS}
    rng = random.Random(7)
    mixed: list[str] = []
    while any(per_key.values()):
        mixed.append(per_key[rng.choice([k for k in KEYS if per_key[k]])].pop(0))
    assert validate(mixed, KEYS, N) == []


def test_the_app_run_in_process_passes() -> None:
    app, _ = load_app(Path(__file__).parent / "apps" / "sequence_window.py")
    result = run(app, make_input(K, N))
    assert result.lines("windows")[:4] == ["k00:[1]", "k01:[1]", "k02:[1]", "k00:[1,2]"]
    assert validate(result.lines("windows"), KEYS, N) == []


def test_a_lost_output_is_a_gap() -> None:
    found = validate(drop(good(), render("k01", window(5))), KEYS, N)
    assert kinds(found) == [("gap", "k01")]
    assert "value 5 never emitted" in str(found[0])


def test_a_lost_input_is_a_gap_and_windows_that_skip_a_value() -> None:
    others = [x for x in expected_output(K, 6) if not x.startswith("k01:")]
    k01 = [render("k01", w) for w in ([1], [1, 2], [1, 2, 3], [1, 2, 3, 5], [2, 3, 5, 6])]
    found = validate(others + k01, KEYS, 6)
    assert kinds(found) == [("state", "k01"), ("state", "k01"), ("gap", "k01")]
    assert "k01:[1,2,3,5] after #" in str(found[0]) and "is k01:[2,3,4,5]" in str(found[0])


def test_a_duplicate_is_reported() -> None:
    lines = good()
    i = lines.index(render("k02", window(7)))
    lines.insert(i + 1, lines[i])
    found = validate(lines, KEYS, N)
    assert kinds(found) == [("duplicate", "k02")]
    assert "repeats 7" in str(found[0])


def test_a_reprocessed_record_is_a_duplicate_and_a_wrong_window() -> None:
    lines = good()
    i = lines.index(render("k00", window(3)))
    lines.insert(i + 1, render("k00", [1, 2, 3, 3]))
    assert set(kinds(validate(lines, KEYS, N))) == {("duplicate", "k00"), ("state", "k00")}


def test_a_reorder_is_reported() -> None:
    lines = good()
    a, b = lines.index(render("k01", window(4))), lines.index(render("k01", window(5)))
    lines[a], lines[b] = lines[b], lines[a]
    found = validate(lines, KEYS, N)
    assert kinds(found) == [("reorder", "k01")]
    assert "k01:[1,2,3,4] comes after #" in str(found[0]) and str(found[0]).endswith("k01:[2,3,4,5]")


def test_a_missing_tail_is_reported() -> None:
    lines = [x for x in good() if x not in {render("k02", window(v)) for v in (9, 10)}]
    found = validate(lines, KEYS, N)
    assert kinds(found) == [("tail", "k02")]
    assert "ends at 8, not at 10; values 9..10 never emitted" in str(found[0])


def test_lost_state_shows_as_windows_that_restart() -> None:
    others = [x for x in good() if not x.startswith("k00:")]
    found = validate(others + [render("k00", [v]) for v in range(1, N + 1)], KEYS, N)
    assert {v.kind for v in found} == {"state"} and len(found) == N - 1  # only [1] is right


def test_junk_missing_and_unknown_keys_are_reported() -> None:
    lines = [x for x in good() if not x.startswith("k02:")] + ["k09:[1]", "oops"]
    assert sorted(kinds(validate(lines, KEYS, N)), key=str) == [
        ("malformed", None), ("missing key", "k02"), ("unknown key", "k09")]


@pytest.mark.parametrize("limit", [1, 50])
def test_report_counts_every_kind_and_shows_the_first(limit: int) -> None:
    found = validate(drop(drop(good(), render("k00", window(2))), render("k01", window(3))), KEYS, N)
    text = report(found, limit=limit)
    assert text.startswith("2 violation(s): 2 gap")
    assert ("... and 1 more" in text) == (limit == 1)
