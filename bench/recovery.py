"""Recovery time: from SIGKILL of a partition's owner to that partition committing again on
its new owner, with 100k keys of state in the partition; with a recent snapshot and with none
(the whole changelog replayed), in one run.

    python bench/recovery.py [--keys 100000] [--member-ttl 1.0]

The total includes the membership TTL: the time the cluster takes to declare the killed runner
gone. It is printed separately, as is each new owner's own restore time from its log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from pathlib import Path

from wallaroo.control import apps, ingest
from wallaroo.core.names import LEASES_BUCKET, AppNames, partition_key
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APP = Path(__file__).parent / "apps" / "keyed_counter.py"
NEVER = ["--snapshot-every", "100000000", "--snapshot-seconds", "1000000"]
RECENT = ["--snapshot-every", "5", "--snapshot-seconds", "0.5"]


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


async def measure(cluster: DevCluster, keys: int) -> float:
    nats = await Nats.connect(cluster.url)
    stop = asyncio.Event()
    try:
        m = await apps.deploy(nats, APP, key=cluster.deploy_key)
        await ingest.send(nats, m, "in", [f"k{i}".encode() for i in range(keys)], "load")
        await apps.wait_idle(nats, m, timeout=300)
        owner = await holder(nats, m.slug)
        victim = next(r for r in cluster.runners if r.runner_id == owner)
        feeder = asyncio.create_task(trickle(nats, m, stop))
        await asyncio.sleep(1.0)  # steady commits; with RECENT, snapshots are current
        seq = await last_commit_seq(nats, m.slug)
        killed = time.monotonic()
        victim.kill()
        while not (await holder(nats, m.slug) not in (owner, None)
                   and await last_commit_seq(nats, m.slug) > seq):
            await asyncio.sleep(0.005)
        took = time.monotonic() - killed
        stop.set()
        await feeder
        return took
    finally:
        await nats.close()


def restore_times(cluster: DevCluster) -> list[str]:
    found = []
    for log in (cluster.state_dir / "logs").glob("*.log"):
        found += re.findall(r"^(\S+ \S+) .*log\.1\.0: restored (\d+) commits \(snapshot: commit (\w+)\),"
                            r" (\d+) state slots.* in ([\d.]+)s", log.read_text(), re.MULTILINE)
    # Which snapshot the restore used is printed: a "recent snapshot" run that found none shows it.
    return [f"{int(slots):,} keys, newest commit {commits}, snapshot at commit {snap}, in {secs}s"
            for _, commits, snap, slots, secs in sorted(found) if int(slots) > 0]


def run(keys: int, ttl: float, args: list[str]) -> tuple[float, list[str]]:
    with tempfile.TemporaryDirectory() as tmp, DevCluster(
            Path(tmp) / "c", runners=2, member_ttl=ttl, runner_args=args) as cluster:
        os.environ["WALLAROO_CREDS"] = str(cluster.creds("deployer"))  # authentication is on
        took = asyncio.run(measure(cluster, keys))
        return took, restore_times(cluster)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--member-ttl", type=float, default=1.0)
    a = p.parse_args()
    print(f"{a.keys:,} keys in one partition; membership TTL {a.member_ttl}s (part of each total)")
    for label, args in (("recent snapshot", RECENT), ("no snapshot", NEVER)):
        took, restores = run(a.keys, a.member_ttl, args)
        print(f"{label:16}: SIGKILL -> committing on the new owner in {took:.2f}s "
              f"(restores: {'; '.join(restores[-1:]) or '?'})")


if __name__ == "__main__":
    main()
