"""wallaroo dev's supervisor: how an exit is named, and which crashes count as a crash loop."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import cast

from wallaroo.local.dev import DevCluster, RunnerProcess
from wallaroo.local.supervise import MAX_QUICK_FAILURES, QUICK, Supervisor, exit_text


def test_an_exit_is_named_by_its_code_or_its_signal() -> None:
    assert exit_text(3) == "code 3"
    assert exit_text(-signal.SIGKILL) == "killed by SIGKILL"


def test_only_crashes_soon_after_a_start_count_towards_giving_up(tmp_path: Path) -> None:
    now = [100.0]
    supervisor = Supervisor(cast(DevCluster, None), lambda _: None, clock=lambda: now[0])
    runner = RunnerProcess("nats://127.0.0.1:1", "r0", tmp_path)

    def crash_after(seconds: float) -> int:
        runner.started_at = now[0]
        now[0] += seconds
        return supervisor.count_failure(runner)

    assert crash_after(QUICK + 1) == 0  # it ran a while: restarted at once, nothing counted
    counts = [crash_after(0.1) for _ in range(MAX_QUICK_FAILURES)]
    assert counts == list(range(1, MAX_QUICK_FAILURES + 1))
    assert crash_after(QUICK + 1) == 0  # a good run in between starts the count over
