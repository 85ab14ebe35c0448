"""The progress view `wallaroo run` and `wallaroo dev --input` share: off a terminal, plain
lines at a bounded rate, and the last state always."""

from __future__ import annotations

import pytest

from wallaroo.local.runjob import PLAIN_EVERY, JobView, Shown


def test_plain_lines_come_every_plain_every_seconds_and_at_the_end(
        capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    view = JobView(False, clock=lambda: now[0], counting="records")
    with view:
        for tick in range(25):  # 12 s of updates every half second
            now[0] = tick * 0.5
            view.show(Shown(tick, 100, tick, 2.0, "sending"), lambda: f"at {now[0]:g}")
        view.show(Shown(100, 100, 100, 2.0, "processing", last=True), lambda: "last")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["wallaroo: at 0", f"wallaroo: at {PLAIN_EVERY:g}",
                     f"wallaroo: at {2 * PLAIN_EVERY:g}", "wallaroo: last"]
