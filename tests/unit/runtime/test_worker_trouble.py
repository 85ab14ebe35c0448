"""A partition whose worker keeps failing shows in the runner's heartbeat, and so in `wallaroo
status` problems, until a worker started after the failure commits (or the failure is old);
malformed input counts show per partition, and so does a batch running user code for long.
A clock is injected by patching time.monotonic."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

import wallaroo as wl
from wallaroo.control.status import BUSY_SHOWN, PARTITION_COLUMNS, _busy, _problem_rows
from wallaroo.core.wire import Heartbeat
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.functions import App
from wallaroo.nats.memory import MemoryNats
from wallaroo_runtime import runner as runner_mod
from wallaroo_runtime.checkpoint import CheckpointConfig
from wallaroo_runtime.cluster import ClusterConfig
from wallaroo_runtime.executor import ExecutorConfig
from wallaroo_runtime.runner import TROUBLE_SHOWN, AppHost

PART = (0, 1)


@wl.computation(name="same")
def same(s: bytes) -> bytes:
    return s


APP = wl.build_application("trouble", wl.source("in", wl.StreamSource()).to(same)
                           .to_sink(wl.StreamSink("out")), partitions=2)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(runner_mod.time, "monotonic", c)
    return c


def host() -> AppHost:
    """An AppHost owning PART; only what its report reads is real."""
    manifest = cast(Any, SimpleNamespace(version="v1", deploy_id="v1@1.0"))
    h = AppHost(cast(Any, None), manifest, App("trouble"), "r0", WorkerConfig(),
                CheckpointConfig(), ClusterConfig(), ExecutorConfig(), lambda _: None)
    h.owned = {PART}
    return h


def worker() -> PartitionWorker:
    return PartitionWorker(MemoryNats(), APP, "v1", APP.stages[0], PART[1], WorkerConfig())


def test_a_worker_failing_again_and_again_is_reported_with_its_last_error(clock: Clock) -> None:
    h = host()
    for n in range(3):
        h.workers[PART] = failed = worker()
        h._worker_failed(PART, failed, ValueError(f"bad changelog {n}"))
        clock.now += 5.0

    report = h.report(0.0)

    assert report.failures == 3
    assert report.errors == {PART: "worker failed 3 time(s), last: ValueError: bad changelog 2"}


def test_the_error_goes_once_a_new_worker_commits_or_it_is_old(clock: Clock) -> None:
    h = host()
    h.workers[PART] = failed = worker()
    h._worker_failed(PART, failed, ValueError("blip"))
    h.workers[PART] = fresh = worker()
    assert PART in h.report(0.0).errors  # restarted, nothing committed yet

    fresh.progress.commits = 1
    assert h.report(0.0).errors == {}

    fresh.progress.commits = 0
    clock.now += TROUBLE_SHOWN  # an idle partition that failed once, long ago
    assert h.report(0.0).errors == {}


def test_a_partition_no_longer_owned_here_reports_no_error(clock: Clock) -> None:
    h = host()
    h._worker_failed(PART, worker(), ValueError("x"))
    h.owned = set()
    assert h.report(0.0).errors == {}


def test_status_lists_failing_partitions_and_malformed_counts(clock: Clock) -> None:
    h = host()
    h.workers[PART] = w = worker()
    w.progress.malformed = 2
    h._worker_failed(PART, w, RuntimeError("restore failed"))
    beat = Heartbeat("r0", 1, "h", 0.0, 0.0, 0, {"trouble": h.report(0.0)}, {"old": "v0: refused"})

    rows = _problem_rows([Heartbeat.from_wire(beat.to_wire())])

    assert rows == [["r0", "old", "v0: refused"],
                    ["r0", "trouble", "stage 0 partition 1: worker failed 1 time(s), last: "
                                      "RuntimeError: restore failed"]]
    assert beat.apps["trouble"].partitions[PART].malformed == 2 and "malformed" in PARTITION_COLUMNS


def test_a_batch_running_user_code_for_long_shows_in_the_report_and_as_a_problem(clock: Clock) -> None:
    h = host()
    h.workers[PART] = w = worker()
    h.workers[(0, 0)] = worker()  # idle
    w._busy_since = time.monotonic() - 12.3  # its batch's user code started 12.3 s ago
    beat = Heartbeat("r0", 1, "h", 0.0, 0.0, 0, {"trouble": h.report(0.0)}, {})

    parts = Heartbeat.from_wire(beat.to_wire()).apps["trouble"].partitions
    assert parts[PART].busy_for >= 12.3 and parts[(0, 0)].busy_for == 0.0
    assert _problem_rows([beat]) == [["r0", "trouble", "stage 0 partition 1: one batch running "
                                                       "for 12s"]]
    assert (_busy(12.3), _busy(0.0), "busy" in PARTITION_COLUMNS) == ("12s", "-", True)
    w._busy_since = time.monotonic() - BUSY_SHOWN / 2  # a step this slow is not a problem yet
    assert _problem_rows([Heartbeat("r0", 1, "h", 0.0, 0.0, 0, {"trouble": h.report(0.0)}, {})]) == []
