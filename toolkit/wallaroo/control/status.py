"""What `wallaroo status` shows: apps and stages, every partition's owner and progress, the
runners (which one leads), and any errors runners reported."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from wallaroo.core import observe
from wallaroo.core.names import (
    ASSIGN_BUCKET,
    LEASES_BUCKET,
    partition_key,
)
from wallaroo.core.observe import Lag
from wallaroo.core.wire import Assignment, Heartbeat, Holder, Manifest, Part, PartitionReport
from wallaroo.nats import Nats

# "deployed": the manifest's version; "running": what runners report they run (a refused or
# unfinished deploy leaves them on another one; the runners' errors say why).
# A row per stage by default (an app of 3 stages of 16 partitions is 3 rows, not 48);
# `wallaroo status --partitions` adds PARTITION_COLUMNS, a row per partition.
APP_COLUMNS = ["app", "deployed", "running", "stage", "name", "partitions", "runners", "pending",
               "ack pending", "processed", "records/s", "dead letters", "busy"]
PARTITION_COLUMNS = ["app", "stage", "partition", "owner", "running on", "committed seq", "lag",
                     "records/s", "malformed", "busy"]
RUNNER_COLUMNS = ["runner", "role", "pid", "host", "partitions", "commits", "records", "records/s",
                  "heartbeat", "metrics"]
FUNCTION_COLUMNS = ["app", "function", "schedule", "pending", "running", "done", "failed", "retried",
                    "p50 ms", "p99 ms"]
SINK_COLUMNS = ["app", "sink", "running on", "delivered", "skipped", "rejected", "last seq",
                "pending"]
PROBLEM_COLUMNS = ["runner", "app", "error"]
# A batch whose user code runs longer than this is a problem row: a slow (or stuck) step is
# why its partition's lag grows, and nothing else would say so.
BUSY_SHOWN = 5.0


@dataclass(frozen=True)
class Status:
    apps: list[list[str]]
    partitions: list[list[str]]
    runners: list[list[str]]
    sinks: list[list[str]]
    problems: list[list[str]]
    functions: list[list[str]]


async def gather(nats: Nats) -> Status:
    beats = await observe.runner_heartbeats(nats)
    leader = await observe.leader(nats)
    apps: list[list[str]] = []
    partitions: list[list[str]] = []
    functions: list[list[str]] = []
    for manifest in await observe.manifests(nats):
        functions += await _function_rows(nats, manifest, beats)
        by_part = await observe.partition_lags(nats, manifest)  # one consumer read per partition
        running = running_versions(manifest.slug, beats)
        waiting = await observe.unconsumed(nats, manifest, by_part)
        views = await _partition_views(nats, manifest, beats, by_part)
        for lag in observe.stage_totals(manifest, by_part, waiting):
            apps.append([manifest.name, manifest.version, running, str(lag.stage), lag.name,
                         str(lag.partitions), *_stage_summary([v for v in views if v.stage == lag.stage],
                                                              lag)])
        partitions += [v.row() for v in views]
    runners = [_runner_row(b, leader) for b in beats]
    return Status(apps, partitions, runners, _sink_rows(beats), _problem_rows(beats), functions)


def _stage_summary(views: list[PartitionView], lag: observe.StageLag) -> list[str]:
    """The runners, pending, ack pending, processed, records/s, dead letters and busy cells
    of a stage's row: its partitions' added up (busy: the longest-running batch)."""
    reps = [v.report for v in views if v.report is not None]
    runners = sorted({v.running for v in views if v.running != "-"})
    return [", ".join(runners) or "-", str(lag.pending), str(lag.ack_pending),
            str(sum(r.records for r in reps)), f"{sum(r.rate for r in reps):.0f}",
            str(sum(r.dead for r in reps)),  # malformed messages included
            _busy(max((r.busy_for for r in reps), default=0.0))]


def _problem_rows(beats: list[Heartbeat]) -> list[list[str]]:
    """Versions a runner cannot run, partitions whose worker keeps failing there, and
    partitions whose batch in hand has been running user code for more than BUSY_SHOWN."""
    rows = [[b.id, app, err] for b in beats for app, err in sorted(b.errors.items())]
    for b in beats:
        for slug, app in sorted(b.apps.items()):
            rows += [[b.id, slug, f"stage {stage} partition {part}: {err}"]
                     for (stage, part), err in sorted(app.errors.items())]
            rows += [[b.id, slug, f"stage {stage} partition {part}: one batch running for "
                                  f"{rep.busy_for:.0f}s"]
                     for (stage, part), rep in sorted(app.partitions.items())
                     if rep.busy_for > BUSY_SHOWN]
    return rows


def running_versions(slug: str, beats: list[Heartbeat]) -> str:
    """The versions of app `slug` that live runners run, with how many run each:
    `abc (2), def (1)`; `-` when none does."""
    counts = Counter(b.apps[slug].version for b in beats if slug in b.apps)
    return ", ".join(f"{v} ({n})" for v, n in sorted(counts.items())) or "-"


async def _function_rows(nats: Nats, m: Manifest, beats: list[Heartbeat]) -> list[list[str]]:
    """Per function: calls waiting and running (from the calls stream), and what the runners
    running its current version report: results, retries, latency (the slowest runner's)."""
    rows = []
    for f, lag in zip(m.functions, await observe.function_lags(nats, m), strict=True):
        apps = [b.apps[m.slug] for b in beats if m.slug in b.apps]
        reports = [a.functions[f.name] for a in apps if a.version == m.version and f.name in a.functions]
        done, failed, retried = (sum(getattr(r, k) for r in reports) for k in ("done", "failed", "retried"))
        p50 = max((r.p50_ms for r in reports), default=0.0)
        p99 = max((r.p99_ms for r in reports), default=0.0)
        rows.append([m.name, f.name, f.schedule or "-", str(lag.pending), str(lag.ack_pending),
                     str(done), str(failed), str(retried), f"{p50:.1f}", f"{p99:.1f}"])
    return rows


def _sink_rows(beats: list[Heartbeat]) -> list[list[str]]:
    """Connector sinks (files, S3, HTTP, NATS subjects), each reported by the runner that
    delivers it; `pending` counts output messages not yet handed to it."""
    rows = []
    for b in beats:
        for slug, app in sorted(b.apps.items()):
            for name, st in app.sinks.items():
                rows.append([slug, name, b.id, str(st.delivered), str(st.skipped),
                             str(st.rejected), str(st.last_seq), str(st.pending)])
    return sorted(rows)


@dataclass(frozen=True)
class PartitionView:
    """One partition of an app: who should own it, who runs it (the lease holder) and what
    that runner reports of it."""

    app: str
    stage: int
    partition: int
    owner: str
    running: str
    report: PartitionReport | None
    lag: Lag | None

    def row(self) -> list[str]:
        """The cells of PARTITION_COLUMNS."""
        rep = self.report
        return [self.app, str(self.stage), str(self.partition), self.owner, self.running,
                str(rep.committed_seq) if rep else "-", "-" if self.lag is None else str(sum(self.lag)),
                str(rep.rate) if rep else "-", str(rep.malformed) if rep else "-",
                _busy(rep.busy_for if rep else 0.0)]


async def _partition_views(nats: Nats, m: Manifest, beats: list[Heartbeat],
                           lags: dict[Part, Lag | None]) -> list[PartitionView]:
    raw = await nats.kv_get(ASSIGN_BUCKET, m.slug)
    owners = Assignment.from_wire(raw).owners if raw else {}
    reports = {(b.id, part): p for b in beats
               for part, p in (b.apps[m.slug].partitions.items() if m.slug in b.apps else [])}
    views = []
    for part, lag in lags.items():
        holder = await nats.kv_get(LEASES_BUCKET, partition_key(m.slug, *part))
        running = Holder.from_wire(holder).runner_id if holder else "-"
        views.append(PartitionView(m.name, part[0], part[1], owners.get(part, "-"), running,
                                   reports.get((running, part)), lag))
    return views


def _busy(seconds: float) -> str:
    """How long the batch in hand has run user code, once that is long enough to notice."""
    return f"{seconds:.0f}s" if seconds >= 1.0 else "-"


def _runner_row(b: Heartbeat, leader: str) -> list[str]:
    parts = b.partitions
    return [b.id, "leader" if b.id == leader else "", str(b.pid), b.host,
            str(len(parts)), str(sum(p.commits for p in parts)),
            str(sum(p.records for p in parts)), f"{sum(p.rate for p in parts):.0f}",
            f"{time.time() - b.ts:.1f}s ago", metrics_url(b)]


def metrics_url(b: Heartbeat) -> str:
    """Where Prometheus scrapes runner `b`; `-` for a runner that serves no metrics."""
    return f"http://{b.metrics}/metrics" if b.metrics else "-"


@dataclass(frozen=True)
class Rollout:
    version: str
    ready: list[str]  # runners running the version, from this very deploy
    failed: dict[str, str]  # runner -> why it cannot run it
    waiting: list[str]  # runners still on another version

    @property
    def done(self) -> bool:
        return not self.waiting

    @property
    def ok(self) -> bool:
        return not self.waiting and not self.failed

    def problems(self) -> list[str]:
        """One line per runner that refused the version (naming it and why), one for the
        runners still not on it when the wait ended."""
        lines = [f"runner {r} refused {self.version}: {why.removeprefix(self.version + ': ')}"
                 for r, why in sorted(self.failed.items())]
        if self.waiting:
            lines.append(f"rollout timed out: runner(s) {', '.join(sorted(self.waiting))} "
                         f"still not running {self.version}")
        return lines


async def rollout(nats: Nats, manifest: Manifest) -> Rollout:
    """Where the live runners are with `manifest`'s version."""
    ready, waiting, failed = [], [], {}
    for beat in await observe.runner_heartbeats(nats):
        app = beat.apps.get(manifest.slug)
        # The refusal first: a runner refuses a re-deploy of the version it runs (say,
        # signed with another key) and keeps running it. Only a refusal of this very deploy
        # counts: an older deploy of the same version may have been refused for another reason.
        if beat.refused.get(manifest.slug) == manifest.deploy_id:
            failed[beat.id] = beat.errors.get(manifest.slug, "refused")
        elif app is not None and app.version == manifest.version and app.deploy_id in (
                "", manifest.deploy_id):  # "": a runner from before deploy ids
            ready.append(beat.id)
        else:
            waiting.append(beat.id)
    return Rollout(manifest.version, ready, failed, waiting)


async def wait_rollout(nats: Nats, manifest: Manifest, timeout: float,
                       progress: Callable[[Rollout], None] | None = None,
                       min_ready: int = 0) -> Rollout:
    """Until every live runner runs (or has refused) the deployed version and at least
    `min_ready` run it, or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        state = await rollout(nats, manifest)
        if progress is not None:
            progress(state)
        if (state.done and len(state.ready) >= min_ready) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.1)
