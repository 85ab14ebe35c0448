"""What `wallaroo status` shows: apps and stages, every partition's owner and progress, the
runners (which one leads), and any errors runners reported."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wallaroo import ops
from wallaroo.names import (
    ASSIGN_BUCKET,
    LEADER_BUCKET,
    LEADER_KEY,
    LEASES_BUCKET,
    MEMBERS_BUCKET,
    partition_key,
)
from wallaroo.natsio import Nats
from wallaroo.packaging import Manifest

APP_COLUMNS = ["app", "version", "stage", "name", "partitions", "pending", "ack pending"]
PARTITION_COLUMNS = ["app", "stage", "partition", "owner", "running on", "committed seq", "lag",
                     "records/s"]
RUNNER_COLUMNS = ["runner", "role", "pid", "host", "partitions", "commits", "records", "records/s",
                  "heartbeat"]
SINK_COLUMNS = ["app", "sink", "running on", "delivered", "skipped", "rejected", "last seq",
                "pending"]
PROBLEM_COLUMNS = ["runner", "app", "error"]


@dataclass(frozen=True)
class Status:
    apps: list[list[str]]
    partitions: list[list[str]]
    runners: list[list[str]]
    sinks: list[list[str]]
    problems: list[list[str]]


async def gather(nats: Nats) -> Status:
    beats = await runner_heartbeats(nats)
    leader = await nats.kv_get(LEADER_BUCKET, LEADER_KEY)
    apps: list[list[str]] = []
    partitions: list[list[str]] = []
    for manifest in await ops.manifests(nats):
        by_part = await ops.partition_lags(nats, manifest)  # one consumer read per partition
        for lag in ops.stage_totals(manifest, by_part):
            apps.append([manifest.name, manifest.version, str(lag.stage), lag.name,
                         str(lag.partitions), str(lag.pending), str(lag.ack_pending)])
        partitions += await _partition_rows(nats, manifest, beats, by_part)
    problems = [[r["id"], app, err] for r in beats for app, err in sorted(r["errors"].items())]
    runners = [_runner_row(r, leader.decode() if leader else "") for r in beats]
    return Status(apps, partitions, runners, _sink_rows(beats), problems)


def _sink_rows(beats: list[dict[str, Any]]) -> list[list[str]]:
    """Connector sinks (files, S3, HTTP, NATS subjects), each reported by the runner that
    delivers it; `pending` counts output messages not yet handed to it."""
    rows = []
    for r in beats:
        for slug, app in sorted(r["apps"].items()):
            for name, st in app.get("sinks", {}).items():
                rows.append([slug, name, r["id"], str(st["delivered"]), str(st["skipped"]),
                             str(st["rejected"]), str(st["last_seq"]), str(st["pending"])])
    return sorted(rows)


async def runner_heartbeats(nats: Nats) -> list[dict[str, Any]]:
    """What each live runner last reported (apps, progress, errors), oldest runner first."""
    beats = []
    for key in await nats.kv_keys(MEMBERS_BUCKET):
        raw = await nats.kv_get(MEMBERS_BUCKET, key)
        if raw is not None:
            beats.append(json.loads(raw))
    return sorted(beats, key=lambda r: r["started"])


async def _partition_rows(nats: Nats, m: Manifest, beats: list[dict[str, Any]],
                         lags: dict[tuple[int, int], tuple[int, int] | None]) -> list[list[str]]:
    raw = await nats.kv_get(ASSIGN_BUCKET, m.slug)
    owners: dict[str, str] = json.loads(raw) if raw else {}
    reports = {(r["id"], k): p for r in beats
               for k, p in r["apps"].get(m.slug, {}).get("partitions", {}).items()}
    rows = []
    for (stage, part), lag in lags.items():
        key = f"{stage}.{part}"
        holder = await nats.kv_get(LEASES_BUCKET, partition_key(m.slug, stage, part))
        running = holder.decode() if holder else "-"
        rep = reports.get((running, key), {})
        rows.append([m.name, str(stage), str(part), owners.get(key, "-"), running,
                     str(rep.get("committed_seq", "-")), "-" if lag is None else str(sum(lag)),
                     str(rep.get("rate", "-"))])
    return rows


def _runner_row(r: dict[str, Any], leader: str) -> list[str]:
    parts = [p for a in r["apps"].values() for p in a["partitions"].values()]
    return [r["id"], "leader" if r["id"] == leader else "", str(r["pid"]), r["host"],
            str(len(parts)), str(sum(p["commits"] for p in parts)),
            str(sum(p["records"] for p in parts)), f"{sum(p['rate'] for p in parts):.0f}",
            f"{time.time() - r['ts']:.1f}s ago"]


@dataclass(frozen=True)
class Rollout:
    version: str
    ready: list[str]  # runners running the version
    failed: dict[str, str]  # runner -> why it cannot run it
    waiting: list[str]  # runners still on another version

    @property
    def done(self) -> bool:
        return not self.waiting


async def rollout(nats: Nats, manifest: Manifest) -> Rollout:
    """Where the live runners are with `manifest`'s version."""
    ready, waiting, failed = [], [], {}
    for beat in await runner_heartbeats(nats):
        error = beat["errors"].get(manifest.slug, "")
        if beat["apps"].get(manifest.slug, {}).get("version") == manifest.version:
            ready.append(beat["id"])
        elif error.startswith(manifest.version):
            failed[beat["id"]] = error
        else:
            waiting.append(beat["id"])
    return Rollout(manifest.version, ready, failed, waiting)


async def wait_rollout(nats: Nats, manifest: Manifest, timeout: float,
                       progress: Callable[[Rollout], None] | None = None) -> Rollout:
    """Until every live runner runs (or has refused) the deployed version, or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        state = await rollout(nats, manifest)
        if progress is not None:
            progress(state)
        if state.done or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.1)
