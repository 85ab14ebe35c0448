"""Word count with Wallaroo's exact semantics (../shared/acceptance/README.md): fed the Bill of
Rights, exactly 482 outputs, and each word's last count equals expected_final_counts.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import wallaroo.testing
from wallaroo.core.packaging import load_app

HERE = Path(__file__).parent
APP_FILE = HERE / "word_count.py"


def lines() -> list[bytes]:
    return [line for line in (HERE / "count_this.txt").read_bytes().split(b"\n") if line]


def last_counts(outputs: list[str]) -> dict[str, int]:
    last: dict[str, int] = {}
    for out in outputs:
        word, n = out.rsplit(" => ", 1)
        last[word] = int(n)
    return last


def expected() -> dict[str, int]:
    return dict(json.loads((HERE / "expected_final_counts.json").read_text()))


def check(outputs: list[str]) -> None:
    assert len(outputs) == 482
    assert last_counts(outputs) == expected()
    # each word's counts run 1..n exactly once, whatever the order across words
    assert Counter(outputs) == Counter(f"{w} => {i}" for w, n in expected().items()
                                       for i in range(1, n + 1))


@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_in_process(batch_size: int) -> None:
    app, _ = load_app(APP_FILE)
    check(wallaroo.testing.run(app, lines(), batch_size=batch_size).lines("counts"))


@pytest.mark.integration
def test_on_runner(run_on_runner) -> None:  # type: ignore[no-untyped-def]
    outputs = run_on_runner(APP_FILE, [("lines", line) for line in lines()], runners=2)
    check(outputs["counts"])
