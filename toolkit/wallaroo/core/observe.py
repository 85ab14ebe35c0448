"""Reading the cluster's state out of NATS: deployed manifests, consumer lag per partition and
stage, runner heartbeats. Shared by `wallaroo status` (control) and the autoscaler (runtime)."""

from __future__ import annotations

from dataclasses import dataclass

from wallaroo.core import repartition
from wallaroo.core.names import (
    APPS_BUCKET,
    LAYOUTS_BUCKET,
    LEADER_BUCKET,
    LEADER_KEY,
    MEMBERS_BUCKET,
    AppNames,
)
from wallaroo.core.wire import CommitRecord, Heartbeat, Holder, Manifest, Part, Retirement, StageInfo
from wallaroo.nats import Nats

Lag = tuple[int, int]  # (num_pending, num_ack_pending) of a partition's consumer


@dataclass(frozen=True)
class StageLag:
    """Backlog of one stage of one app: its consumers' pending and ack-pending messages
    added up; `missing` partitions have no consumer yet (nobody ran them)."""

    app: str
    stage: int
    name: str
    pending: int
    ack_pending: int = 0
    partitions: int = 1
    missing: int = 0

    @property
    def lag(self) -> int:
        """What the autoscaler drains: `num_pending + num_ack_pending`."""
        return self.pending + self.ack_pending


async def manifests(nats: Nats) -> list[Manifest]:
    """Every deployed app's manifest."""
    found = []
    for key in await nats.kv_keys(APPS_BUCKET):
        raw = await nats.kv_get(APPS_BUCKET, key)
        if raw is not None:
            found.append(Manifest.from_wire(raw))
    return found


async def retirement(nats: Nats, slug: str) -> Retirement:
    """The app's retired layouts, as the leader recorded them (none: an empty record)."""
    raw = await nats.kv_get(LAYOUTS_BUCKET, slug)
    return Retirement.from_wire(raw) if raw is not None else Retirement()


async def retirement_of(nats: Nats, manifest: Manifest) -> Retirement:
    """`retirement` where it can matter: only a stage draining a layout (`prev`) has one to
    retire, so an app with none is not asked about (every runner asks, every tick)."""
    if all(st.prev is None for st in manifest.stages):
        return Retirement()
    return await retirement(nats, manifest.slug)


async def settled_stages(nats: Nats, manifest: Manifest,
                         stages: list[StageInfo] | None = None) -> set[int]:
    """Those of `stages` (default: all of `manifest`'s) that drain no earlier layout any more:
    every partition of their current layout has moved its state in (its last changelog
    record says MIGRATED: every later record carries it on, and a trim keeps the last)."""
    names = AppNames(manifest.slug)
    settled = set()
    for st in manifest.stages if stages is None else stages:
        if st.prev is None:
            settled.add(st.index)
            continue
        lasts = [await last_commit(nats, names, st.index, p) for p in st.parts]
        if all(rec is not None and repartition.MIGRATED in rec.watermarks for rec in lasts):
            settled.add(st.index)
    return settled


async def last_commit(nats: Nats, names: AppNames, stage: int, part: int) -> CommitRecord | None:
    """The partition's newest commit record (None before its first commit). It carries the
    partition's full watermarks, and a changelog trim always keeps it."""
    last = await nats.last_on_subject(names.log_stream, names.log(stage, part))
    return CommitRecord.from_wire(last.data) if last is not None else None


async def partition_lags(nats: Nats, manifest: Manifest) -> dict[Part, Lag | None]:
    """(stage, partition) -> its consumer's lag, None where no consumer exists; the
    partitions runners run (a retired layout's are gone: wallaroo.core.repartition)."""
    names = AppNames(manifest.slug)
    record = await retirement_of(nats, manifest)
    return {
        (st.index, p): await nats.consumer_lag(names.data_stream, AppNames.durable(st.index, p))
        for st in manifest.stages
        for p in repartition.running_parts(st, record)
    }


async def unconsumed(nats: Nats, manifest: Manifest, by_part: dict[Part, Lag | None]
                     ) -> dict[Part, int]:
    """Messages waiting on the partitions no consumer reads yet (a fresh deploy whose runners
    have not started them): counted from the work-queue stream itself, as function_lags does,
    so a backlog there is never taken for idleness (the autoscaler would scale it to zero)."""
    names = AppNames(manifest.slug)
    sources = {st.index: st.source is not None for st in manifest.stages}
    return {(stage, p): await nats.subject_count(names.data_stream, names.input(stage, p, sources[stage]))
            for (stage, p), lag in by_part.items() if lag is None}


def stage_totals(manifest: Manifest, by_part: dict[Part, Lag | None],
                 waiting: dict[Part, int] | None = None) -> list[StageLag]:
    """Per stage, the partition lags of `partition_lags` added up, with the messages
    `waiting` (from `unconsumed`) on partitions that have no consumer."""
    rows = []
    for st in manifest.stages:
        lags = [lag for (stage, _), lag in by_part.items() if stage == st.index]
        present = [lag for lag in lags if lag is not None]
        queued = sum(n for (stage, _), n in (waiting or {}).items() if stage == st.index)
        rows.append(StageLag(manifest.slug, st.index, st.name, sum(p for p, _ in present) + queued,
                             sum(a for _, a in present), st.partitions, len(lags) - len(present)))
    return rows


async def stage_lags(nats: Nats, manifest: Manifest) -> list[StageLag]:
    by_part = await partition_lags(nats, manifest)
    return stage_totals(manifest, by_part, await unconsumed(nats, manifest, by_part))


async def function_lags(nats: Nats, manifest: Manifest) -> list[StageLag]:
    """Per function, its calls waiting (pending) and running (ack pending), as a StageLag
    named "fn:<name>" (stage -1), so the autoscaler weighs calls like stream backlog. Counted
    from the work-queue stream itself: before any runner made the function's consumer (scale
    from zero), the calls are there all the same."""
    names = AppNames(manifest.slug)
    rows = []
    for f in manifest.functions:
        calls = await nats.subject_count(names.calls_stream, names.calls_of(f.name, bool(f.methods)))
        lag = await nats.consumer_lag(names.calls_stream, AppNames.function_durable(f.name))
        running = min(calls, lag[1]) if lag is not None else 0
        rows.append(StageLag(manifest.slug, -1, f"fn:{f.name}", calls - running, running))
    return rows


async def leader(nats: Nats) -> str:
    """The id of the runner that leads the cluster now ("" while none does)."""
    raw = await nats.kv_get(LEADER_BUCKET, LEADER_KEY)
    return Holder.from_wire(raw).runner_id if raw else ""


async def runner_heartbeats(nats: Nats) -> list[Heartbeat]:
    """What each live runner last reported (apps, progress, errors), oldest runner first."""
    beats = []
    for key in await nats.kv_keys(MEMBERS_BUCKET):
        raw = await nats.kv_get(MEMBERS_BUCKET, key)
        if raw is not None:
            beats.append(Heartbeat.from_wire(raw))
    return sorted(beats, key=lambda b: b.started)
