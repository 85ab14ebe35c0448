"""What `wallaroo top` shows: apps and their stages (lag, records/s), and the runners (partitions,
commits/s, records/s, metrics address), from what `wallaroo status` reads: the manifests, the
consumers' lag and the runners' heartbeats.

Rates are differences between two samples: the runners' counters (records, commits) over the
time between their two heartbeats, a stage's lag over the time between the two samples. A
frame drawn from one sample has no rates and shows `-`; `wallaroo top --once` takes two
samples `interval` apart so its single frame has them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table

from wallaroo.control.status import metrics_url
from wallaroo.control.tables import render_table
from wallaroo.core import observe
from wallaroo.core.aio import sleep_or_stop
from wallaroo.core.observe import StageLag
from wallaroo.core.wire import Heartbeat, Manifest, PartitionReport
from wallaroo.nats import Nats

APP_COLUMNS = ["app", "version", "stage", "name", "partitions", "lag", "lag/s", "records/s"]
RUNNER_COLUMNS = ["runner", "role", "partitions", "commits/s", "records/s", "heartbeat", "metrics"]
NO_RATE = "-"


@dataclass(frozen=True)
class Sample:
    """One reading of the cluster, at `at` (seconds of the caller's clock)."""

    at: float
    apps: list[tuple[Manifest, list[StageLag]]]
    beats: list[Heartbeat]
    leader: str


async def sample(nats: Nats, clock: Callable[[], float] = time.monotonic) -> Sample:
    apps = [(m, await observe.stage_lags(nats, m)) for m in await observe.manifests(nats)]
    leader = await observe.leader(nats)
    return Sample(clock(), apps, await observe.runner_heartbeats(nats), leader)


async def two_samples(nats: Nats, interval: float,
                      clock: Callable[[], float] = time.monotonic) -> tuple[Sample, Sample]:
    """Two samples `interval` seconds apart: enough for one frame with rates."""
    first = await sample(nats, clock)
    await asyncio.sleep(interval)
    return first, await sample(nats, clock)


@dataclass(frozen=True)
class Frame:
    """One screen of `wallaroo top`, as rows of text (what the tests read)."""

    apps: list[list[str]]
    runners: list[list[str]]

    def text(self) -> str:
        """Plain text tables, like `wallaroo status` prints (what `--once` prints)."""
        return "\n\n".join(render_table(cols, rows) if rows else empty for cols, rows, empty in (
            (APP_COLUMNS, self.apps, "no apps deployed"),
            (RUNNER_COLUMNS, self.runners, "no runners")))

    def renderable(self) -> Group:
        return Group(_table("apps", APP_COLUMNS, self.apps, "no apps deployed"),
                     _table("runners", RUNNER_COLUMNS, self.runners, "no runners"))


def frame(now: Sample, before: Sample | None = None, wall: Callable[[], float] = time.time) -> Frame:
    """The screen for sample `now`, with rates against `before` (None: no rates)."""
    counters = _Deltas(now, before)
    apps = [_stage_row(m, lag, now, before, counters)
            for m, lags in now.apps for lag in lags]
    runners = [_runner_row(b, now.leader, counters, wall()) for b in now.beats]
    return Frame(apps, runners)


class _Deltas:
    """Per (runner, app, stage, partition): records/s and commits/s between the runner's
    heartbeat in the sample before and in this one. A counter that went down (the partition's
    worker restarted) or a heartbeat that did not move gives no rate."""

    def __init__(self, now: Sample, before: Sample | None) -> None:
        self.rates: dict[tuple[str, str, int, int], tuple[float, float]] = {}
        old = {b.id: b for b in before.beats} if before is not None else {}
        for beat in now.beats:
            prev = old.get(beat.id)
            if prev is not None and beat.ts > prev.ts:
                self._add(beat, prev)

    def _add(self, beat: Heartbeat, prev: Heartbeat) -> None:
        seconds = beat.ts - prev.ts
        for slug, (stage, part), rep in _partitions(beat):
            was = prev.apps[slug].partitions.get((stage, part)) if slug in prev.apps else None
            if was is not None and rep.records >= was.records and rep.commits >= was.commits:
                self.rates[(beat.id, slug, stage, part)] = (
                    (rep.records - was.records) / seconds, (rep.commits - was.commits) / seconds)

    def of(self, runner: str | None = None, slug: str | None = None,
           stage: int | None = None) -> tuple[float, float] | None:
        """(records/s, commits/s) summed over the partitions that match; None if none has a rate."""
        rows = [r for (run, s, st, _), r in self.rates.items()
                if runner in (None, run) and slug in (None, s) and stage in (None, st)]
        if not rows:
            return None
        return sum(r for r, _ in rows), sum(c for _, c in rows)


def _partitions(beat: Heartbeat) -> Iterator[tuple[str, tuple[int, int], PartitionReport]]:
    for slug, app in beat.apps.items():
        for part, rep in app.partitions.items():
            yield slug, part, rep


def _stage_row(m: Manifest, lag: StageLag, now: Sample, before: Sample | None,
               counters: _Deltas) -> list[str]:
    rates = counters.of(slug=m.slug, stage=lag.stage)
    return [m.name, m.version, str(lag.stage), lag.name, str(lag.partitions), str(lag.lag),
            _lag_rate(m.slug, lag, now, before), _rate(rates[0] if rates else None)]


def _lag_rate(slug: str, lag: StageLag, now: Sample, before: Sample | None) -> str:
    """How fast the stage's lag grows (+) or drains (-), per second."""
    if before is None or now.at <= before.at:
        return NO_RATE
    was = next((s for m, lags in before.apps if m.slug == slug for s in lags
                if s.stage == lag.stage), None)
    if was is None:
        return NO_RATE
    return f"{(lag.lag - was.lag) / (now.at - before.at):+.0f}"


def _runner_row(b: Heartbeat, leader: str, counters: _Deltas, wall: float) -> list[str]:
    rates = counters.of(runner=b.id)
    return [b.id, "leader" if b.id == leader else "", str(len(b.partitions)),
            _rate(rates[1] if rates else None), _rate(rates[0] if rates else None),
            f"{wall - b.ts:.1f}s ago", metrics_url(b)]


def _rate(per_second: float | None) -> str:
    return NO_RATE if per_second is None else f"{per_second:.0f}"


def _table(title: str, columns: list[str], rows: list[list[str]], empty: str) -> Table:
    table = Table(title=title, title_justify="left", caption=None if rows else empty)
    for column in columns:
        table.add_column(column, overflow="fold")  # a narrow terminal wraps, never hides, an address
    for row in rows:
        table.add_row(*row)
    return table


async def live(nats: Nats, interval: float, show: Callable[[Frame], None],
               stop: asyncio.Event, clock: Callable[[], float] = time.monotonic) -> None:
    """Until `stop`: a sample every `interval` seconds, each frame shown with rates against
    the sample before it."""
    before: Sample | None = None
    while not stop.is_set():
        now = await sample(nats, clock)
        show(frame(now, before))
        before = now
        await sleep_or_stop(stop, interval)
