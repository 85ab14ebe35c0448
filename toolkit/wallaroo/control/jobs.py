"""Where a job stands (an app whose sources are all bounded), read from NATS: how much of its
input its sources have read, which partitions have flushed at end of input, whether its
connector sinks delivered everything, how many records were dead-lettered. A job is finished
when every source ended, every partition of every stage committed its end-of-input flush, and
every connector sink delivered the last output."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from wallaroo.control import apps
from wallaroo.core import observe
from wallaroo.core.errors import WallarooError
from wallaroo.core.names import (
    APPS_BUCKET,
    CONNECTORS_BUCKET,
    ENDED,
    RECORDS_IN,
    AppNames,
    source_progress_key,
)
from wallaroo.core.wire import CommitRecord, Heartbeat, Manifest, Part, PartitionReport
from wallaroo.nats import Nats

REPORT_WAIT = 5.0  # seconds a finished job waits for the runners' last counts
# Seconds between looks once every partition ended. Each look is a job_state (a request per
# partition, source and sink), for the short time until the sinks' last delivery.
FINAL_POLL = 0.02


@dataclass(frozen=True)
class SourceState:
    name: str
    read: int  # bytes (files) or objects (S3) read
    total: int  # of that many; -1 while the source has not fixed its end yet
    ended: bool


@dataclass(frozen=True)
class JobState:
    sources: list[SourceState]
    parts_ended: int
    parts: int
    records: int  # input records the source stages committed, all told (every run)
    rate: float  # records/s, lately
    dead: int  # dead letters
    sinks_behind: list[str]  # connector sinks with outputs still to deliver

    @property
    def finished(self) -> bool:
        return (all(s.ended for s in self.sources) and self.parts_ended == self.parts
                and not self.sinks_behind)

    @property
    def read(self) -> int:
        return sum(s.read for s in self.sources)

    def read_text(self) -> str:
        """"1,024 of 4,096 bytes (25%)", or "1,024 bytes" while the total is unknown."""
        total = self.total
        if total is None:
            return f"{self.read:,} bytes"
        return f"{self.read:,} of {total:,} bytes" + (f" ({100 * self.read / total:.0f}%)" if total else "")

    @property
    def total(self) -> int | None:
        """Input size in all; None until every source fixed its end."""
        if any(s.total < 0 for s in self.sources):
            return None
        return sum(s.total for s in self.sources)


async def job_state(nats: Nats, manifest: Manifest) -> JobState:
    slug, stages = manifest.slug, manifest.stages
    beats = await observe.runner_heartbeats(nats)
    names = AppNames(slug)
    first = {st.index for st in stages if st.source is not None}
    reports = [(part, r) for b in beats if slug in b.apps for part, r in b.apps[slug].partitions.items()]
    lasts = {(st.index, p): await observe.last_commit(nats, names, st.index, p)
             for st in stages for p in range(st.partitions)}
    return JobState(
        sources=[await _source(nats, slug, st.source) for st in stages if st.source is not None],
        parts_ended=sum([await _ended(nats, names, rec) for rec in lasts.values()]),
        parts=sum(st.partitions for st in stages),
        records=_records(lasts, reports, first),
        rate=sum(r.rate for part, r in reports if part[0] in first),
        dead=await nats.subject_count(names.dlq_stream, names.dlq_all),
        sinks_behind=[s for s in manifest.delivered_sinks if not await _delivered(nats, names, s, beats)],
    )


async def jobs(nats: Nats) -> list[tuple[Manifest, JobState]]:
    """Every deployed job, with where it stands."""
    return [(m, await job_state(nats, m)) for m in await observe.manifests(nats) if m.job]


async def cancel(nats: Nats, name: str) -> Manifest:
    """Stop the job `name` on every runner (its manifest is removed; runners stop an app whose
    manifest is gone). Its streams and state stay: `wallaroo run` resumes it."""
    manifest = await apps.manifest_of(nats, name)
    if not manifest.job:
        msg = f"{manifest.name} is no job (not all its sources are bounded); nothing to cancel"
        raise WallarooError(msg)
    await nats.kv_delete(APPS_BUCKET, manifest.slug)
    return manifest


async def _source(nats: Nats, slug: str, name: str) -> SourceState:
    raw = await nats.kv_get(CONNECTORS_BUCKET, source_progress_key(slug, name))
    if raw is None:
        return SourceState(name, 0, -1, False)
    p = json.loads(raw)
    end, ended = int(p.get("end", -1)), bool(p.get("ended"))
    if p.get("last_unit"):  # S3: progress in objects, known only at the end
        return SourceState(name, end if ended else 0, end, ended)
    read = int(p.get("acked", 0))
    if p.get("files") and not ended:  # a glob: the files before, and the one being read
        current = await nats.kv_get(CONNECTORS_BUCKET, f"{source_progress_key(slug, name)}.{p['unit']}")
        read += int(json.loads(current).get("acked", 0)) if current else 0
    return SourceState(name, read, end, ended)


async def _ended(nats: Nats, names: AppNames, rec: CommitRecord | None) -> bool:
    """Has the partition committed its end-of-input flush and published what it emitted? Its
    inputs are acked only after every output of the commit is stored, and an acked input
    leaves the work queue."""
    if rec is None:
        return False
    return ENDED in rec.watermarks and not await nats.msg_exists(names.data_stream, rec.last_seq)


def _records(lasts: dict[Part, CommitRecord | None], reports: list[tuple[Part, PartitionReport]],
             first: set[int]) -> int:
    """Input records the source stages committed, all told: per partition, the count its
    newest commit record carries (it survives a crash, a move and a resumed run, where a
    runner's own count starts again at 0), or a runner's count where that is higher (the
    runner committed since the record was read, or runs a version that does not count)."""
    reported: dict[Part, int] = {}
    for part, r in reports:
        reported[part] = max(r.records, reported.get(part, 0))
    return sum(max(rec.watermarks.get(RECORDS_IN, 0) if rec else 0, reported.get(part, 0))
               for part, rec in lasts.items() if part[0] in first)


async def _delivered(nats: Nats, names: AppNames, sink: str, beats: list[Heartbeat]) -> bool:
    last = await nats.last_on_subject(names.out_stream, names.out(sink))
    if last is None:
        return True
    done = [r.last_seq for b in beats if names.slug in b.apps
            for n, r in b.apps[names.slug].sinks.items() if n == sink and r.running]
    return bool(done) and max(done) >= last.seq


async def follow(nats: Nats, manifest: Manifest, on_state: Callable[[JobState], None],
                 poll: float = 0.25, timeout: float | None = None) -> JobState:
    """Call `on_state` with the job's state every `poll` seconds until it finished (every
    FINAL_POLL seconds once all its partitions ended: what is left is a sink's last delivery
    and the runners' last reports, and whoever waits for the job should not wait for a slow
    poll); its last state. TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = await job_state(nats, manifest)
        on_state(state)
        if state.finished:
            return await _counted(nats, manifest, FINAL_POLL)
        if deadline is not None and time.monotonic() > deadline:
            msg = f"job {manifest.name} did not finish within {timeout:g}s"
            raise TimeoutError(msg)
        await asyncio.sleep(FINAL_POLL if state.parts_ended == state.parts else poll)


async def _counted(nats: Nats, manifest: Manifest, poll: float) -> JobState:
    """The finished job's state once every runner reported after the end (runners report
    their counts each tick), or after REPORT_WAIT seconds."""
    finished, give_up = time.time(), time.monotonic() + REPORT_WAIT
    while time.monotonic() < give_up:
        beats = [b for b in await observe.runner_heartbeats(nats) if manifest.slug in b.apps]
        if all(b.ts > finished for b in beats):
            break
        await asyncio.sleep(poll)
    return await job_state(nats, manifest)
