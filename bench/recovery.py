"""State at scale and recovery time, with `--keys` keys of state in ONE partition (the worst
case: one owner restores all of it), in one run:

- runner memory per key: the owner's RSS after loading the keys, less before, per key, and
  the RSS (now and at its peak) of its compaction helper process (wallaroo_runtime.compactor);
- snapshot cost: a full snapshot of that state and a delta of 1% of its keys, written to a
  file store in this process (what a runner's checkpointer does), and the last full snapshot
  from the runners' logs (the first is the runner's, later ones its helper's);
- recovery: from SIGKILL of the partition's owner to the partition committing again on its new
  owner, with a current snapshot and with an older one (the changelog since replayed). The
  total includes the membership TTL (the time the cluster takes to declare the killed runner
  gone): the time until another runner holds the partition's lease is printed apart, as is
  the new owner's own restore time from its log.

    python bench/recovery.py [--keys 1000000] [--member-ttl 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wallaroo.control import apps, ingest
from wallaroo.core.changelog import PartitionState
from wallaroo.core.names import LEASES_BUCKET, AppNames, partition_key
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.statestore import FileStore

APP = Path(__file__).parent / "apps" / "keyed_counter.py"
# "Older": no snapshot by count or time, only when the commits held reach the byte bound.
OLDER = ["--snapshot-every", "100000000", "--snapshot-seconds", "1000000"]
RECENT = ["--snapshot-every", "5", "--snapshot-seconds", "0.5"]
console = Console(width=130)  # a log is no terminal: keep rows whole


@dataclass
class Recovery:
    lease_moved: float  # SIGKILL -> another runner holds the partition (the TTL's part)
    committing: float  # SIGKILL -> the partition's next commit on its new owner
    rss_before: int  # KiB, owner, before the keys were loaded
    rss_loaded: int  # KiB, owner, with the keys loaded
    helper: tuple[int, int]  # KiB, the owner's compaction helper process: now, peak (0: none)


async def holder(nats: Nats, slug: str) -> str | None:
    raw = await nats.kv_get(LEASES_BUCKET, partition_key(slug, 1, 0))
    return raw.decode() if raw else None


async def last_commit_seq(nats: Nats, slug: str) -> int:
    names = AppNames(slug)
    last = await nats.last_on_subject(names.log_stream, names.log(1, 0))
    return last.seq if last else 0


async def trickle(nats: Nats, m: Manifest, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        await ingest.send(nats, m, "in", [f"k{n % 1000}".encode()], f"trickle{n}")
        n += 1
        await asyncio.sleep(0.01)


def runner_pid(runner_id: str, cluster: DevCluster) -> int:
    proc = next(r for r in cluster.runners if r.runner_id == runner_id).proc
    assert proc is not None
    return proc.pid


def kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def helper_kib(runner: int) -> tuple[int, int]:
    """RSS now and at its peak (VmHWM) of the runner's compaction helper, a child process;
    zeros if it has none."""
    children = Path(f"/proc/{runner}/task/{runner}/children").read_text().split()
    return max(((kib(int(c)), kib(int(c), "VmHWM")) for c in children), default=(0, 0))


async def measure(cluster: DevCluster, keys: int) -> Recovery:
    nats = await Nats.connect(cluster.url)
    stop = asyncio.Event()
    try:
        m = await apps.deploy(nats, APP, key=cluster.deploy_key)
        await ingest.send(nats, m, "in", [b"warm"], "warm")
        await apps.wait_idle(nats, m, timeout=60)
        owner = await holder(nats, m.slug)
        assert owner is not None
        before = kib(runner_pid(owner, cluster))
        await ingest.send(nats, m, "in", [f"k{i}".encode() for i in range(keys)], "load")
        await apps.wait_idle(nats, m, timeout=300)
        loaded = kib(runner_pid(owner, cluster))
        victim = next(r for r in cluster.runners if r.runner_id == owner)
        feeder = asyncio.create_task(trickle(nats, m, stop))
        await asyncio.sleep(1.0)  # steady commits; with RECENT, snapshots are current
        helper = helper_kib(runner_pid(owner, cluster))
        killed = time.monotonic()
        victim.kill()
        # Read after the kill: a commit the victim made just before it does not count as
        # one on the new owner (it did, 1 run in 2, and then "committing" was the lease move).
        seq = await last_commit_seq(nats, m.slug)
        moved = None
        while True:
            if moved is None and await holder(nats, m.slug) not in (owner, None):
                moved = time.monotonic() - killed
            if moved is not None and await last_commit_seq(nats, m.slug) > seq:
                break
            await asyncio.sleep(0.005)
        took = time.monotonic() - killed
        stop.set()
        await feeder
        return Recovery(moved, took, before, loaded, helper)
    finally:
        await nats.close()


def restore_times(cluster: DevCluster) -> list[str]:
    found = []
    for log in (cluster.state_dir / "logs").glob("*.log"):
        found += re.findall(r"^(\S+ \S+) .*log\.1\.0: restored (\d+) commits \(snapshot: commit (\w+)\),"
                            r" ([~\d,]+) state slots.* in ([\d.]+)s", log.read_text(), re.MULTILINE)
    # Which snapshot the restore used is printed: a "recent snapshot" run that found none shows it.
    return [f"{secs}s: {slots} keys, snapshot of commit {snap}, newest {commits}"
            for _, commits, snap, slots, secs in sorted(found) if slots.strip("~0,")]


def full_snapshots(cluster: DevCluster) -> list[str]:
    """The keyed partition's full snapshots: written by the runner (the first one) or, once
    the state is big, by its helper process (wallaroo_runtime.compactor)."""
    found = []
    for log in (cluster.state_dir / "logs").glob("*.log"):
        text = log.read_text()
        found += [(at, k, b, secs, "runner") for at, k, b, secs in re.findall(
            r"^(\S+ \S+) .*log\.1\.0: full snapshot of commit \d+: (\d+) keys, (\d+) bytes, "
            r"written in ([\d.]+)s", text, re.MULTILINE)]
        found += [(at, k, b, secs, "helper process") for at, k, b, secs in re.findall(
            r"^(\S+ \S+) .*log\.1\.0: full snapshot of commit \d+ written in the background: "
            r"(\d+) keys, (\d+) bytes, in ([\d.]+)s", text, re.MULTILINE)]
    return [f"{int(k):,} keys, {int(b) / 1e6:.1f} MB in {secs}s ({by})"
            for _, k, b, secs, by in sorted(found)]


def run(keys: int, ttl: float, args: list[str]) -> tuple[Recovery, list[str], list[str]]:
    with tempfile.TemporaryDirectory() as tmp, DevCluster(
            Path(tmp) / "c", runners=2, member_ttl=ttl, runner_args=args) as cluster:
        os.environ["WALLAROO_CREDS"] = str(cluster.creds("deployer"))  # authentication is on
        took = asyncio.run(measure(cluster, keys))
        return took, restore_times(cluster), full_snapshots(cluster)


class Count:  # the state bench/apps/keyed_counter.py keeps per key
    def __init__(self, n: int) -> None:
        self.n = n


async def snapshot_costs(keys: int) -> tuple[float, int, float, int]:
    """Seconds and bytes of a full snapshot of `keys` keys and of a delta of 1% of them."""
    table = {f"count\x1fk{i}": pickle.dumps(Count(i), protocol=5) for i in range(keys)}
    state = PartitionState(table=table, commit_no=2, committed_seq=2)
    changed = {k: v for k, (_, v) in zip(range(keys // 100), table.items(), strict=False)}
    with tempfile.TemporaryDirectory() as tmp:
        store, key = FileStore(Path(tmp)), os.urandom(32)
        started = time.perf_counter()
        full_size = await snap.write(store, snap.Snapshot.of("b", 1, 0, state, 2, 0.0), [], key)
        full = time.perf_counter() - started
        started = time.perf_counter()
        delta = snap.Snapshot.delta("b", 1, 0, state, 3, 0.0, 2, changed)
        delta_size = await snap.write(store, delta, [], key)
        return full, full_size, time.perf_counter() - started, delta_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--member-ttl", type=float, default=1.0)
    a = p.parse_args()
    console.print(f"{a.keys:,} keys in one partition; membership TTL {a.member_ttl}s")
    full, full_size, delta, delta_size = asyncio.run(snapshot_costs(a.keys))
    console.print(f"snapshot of {a.keys:,} keys (file store, MACed): full {full:.3f}s "
                  f"({full_size / 1e6:.1f} MB); delta of {a.keys // 100:,} changed keys "
                  f"{delta:.3f}s ({delta_size / 1e6:.2f} MB): {full / delta:.0f}x less")
    table = Table("snapshot", "lease moved (TTL)", "SIGKILL -> committing", "restore (new owner's log)")
    for label, args in (("current", RECENT), ("older + changelog", OLDER)):
        r, restores, fulls = run(a.keys, a.member_ttl, args)
        table.add_row(label, f"{r.lease_moved:.2f}s", f"{r.committing:.2f}s", "; ".join(restores[-1:]) or "?")
        per_key = (r.rss_loaded - r.rss_before) * 1024 / a.keys
        console.print(f"{label}: owner RSS {r.rss_before / 1024:.0f} -> {r.rss_loaded / 1024:.0f} MiB "
                      f"with the keys: {per_key:.0f} bytes per key; its compaction helper "
                      f"{r.helper[0] / 1024:.0f} MiB (peak {r.helper[1] / 1024:.0f}); "
                      f"last full snapshot: {(fulls or ['none'])[-1]}")
    console.print(table)


if __name__ == "__main__":
    main()
