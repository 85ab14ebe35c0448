"""A job: errors per service per hour over a day of logs (run generate.py first).

    wallaroo run examples/log_job/log_job.py

Each log file is a bounded source: the job reads what the files hold when it starts, counts
ERROR lines per service in one-hour windows of event time (the log's own timestamps), emits
every window (the last ones at end of input, as the job ends), and stops. Output lines:
"<service> <hour> <errors> errors of <lines> lines", in part files under errors_per_hour/
(`cat errors_per_hour/part-*`; a part is there whole or not at all). Killed halfway, the same
command resumes where its commits stopped; `--fresh` starts over (clear errors_per_hour/ first).

Files are next to this one, or in $LOG_JOB_DIR when set (where its test puts them)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import wallaroo as wl

DATA = Path(os.environ.get("LOG_JOB_DIR") or Path(__file__).parent).resolve()
SERVICES = ["checkout", "search", "auth", "images"]


class Entry(NamedTuple):
    at: float
    service: str
    error: bool


@wl.decoder
def entry(data: bytes) -> Entry:
    at, service, level, *_ = data.decode().split(" ", 3)
    when = datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return Entry(when.timestamp(), service, level == "ERROR")


@wl.key_extractor
def service(e: Entry) -> str:
    return e.service


class Errors(wl.Aggregation):
    """[first event time, error lines, lines] of one service in one hour."""

    def initial_accumulator(self) -> list[float]:
        return [float("inf"), 0, 0]

    def update(self, e: Entry, acc: list[float]) -> list[float]:
        return [min(acc[0], e.at), acc[1] + e.error, acc[2] + 1]

    def combine(self, a: list[float], b: list[float]) -> list[float]:
        return [min(a[0], b[0]), a[1] + b[1], a[2] + b[2]]

    def output(self, key: str, acc: list[float]) -> str:
        hour = datetime.fromtimestamp(acc[0], UTC).strftime("%Y-%m-%dT%H:00Z")
        return f"{key} {hour} {int(acc[1])} errors of {int(acc[2])} lines"


def source(name: str) -> wl.Pipeline:
    return wl.source(name, wl.FileSource(DATA / "logs" / f"{name}.log", decoder=entry, bounded=True))


def at(e: Entry) -> float:
    return e.at


def merged() -> wl.Pipeline:
    first, *rest = [source(s) for s in SERVICES]
    for other in rest:
        first = first.merge(other)
    return first


hourly = wl.range_windows(wl.minutes(60)).with_timestamp(at).with_delay(wl.minutes(5)).over(Errors)
pipeline = (merged().key_by(service).to(hourly)
            .to_sink(wl.PartsSink("errors", DATA / "errors_per_hour")))
app = wl.build_application("log_job", pipeline, partitions=4)
