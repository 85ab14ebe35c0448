"""Elastic cluster figures on this machine, in one run:
1. word count throughput with 1 and with 2 runners, and their ratio;
2. autoscaler reaction: from "lag appears" to "the new runner commits".

    python bench/scaling.py [--words 600000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from wallaroo.control import apps, ingest
from wallaroo.core import observe
from wallaroo.core.names import ASSIGN_BUCKET
from wallaroo.core.wire import Assignment, Manifest
from wallaroo.local.dev import DevCluster, follow_wishes
from wallaroo.nats import Nats
from wallaroo_runtime.autoscale.backends import LocalBackend
from wallaroo_runtime.autoscale.loop import Autoscaler
from wallaroo_runtime.autoscale.policy import Policy

sys.path.insert(0, str(Path(__file__).parent))
from wordcount import make_lines  # noqa: E402

APP = Path(__file__).parent / "apps" / "parallel_word_count.py"


async def spread_over(nats: Nats, slug: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = await nats.kv_get(ASSIGN_BUCKET, slug)
        if raw and len(set(Assignment.from_wire(raw).owners.values())) == n:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"partitions not spread over {n} runners")


async def throughput(url: str, key: Path, runners: int, lines: list[bytes], words: int) -> float:
    nats = await Nats.connect(url)
    try:
        m = await apps.deploy(nats, APP, key=key)
        await spread_over(nats, m.slug, runners)
        await apps.wait_idle(nats, m, timeout=60)
        start = time.perf_counter()
        await ingest.send(nats, m, "lines", lines, f"bench{runners}")
        await apps.wait_idle(nats, m, timeout=600, poll=0.1)
        return words / (time.perf_counter() - start)
    finally:
        await nats.close()


async def reaction(url: str, cluster: DevCluster, lines: list[bytes]) -> float:
    """Seconds from the first observed lag to the first commit of the runner added for it."""
    nats = await Nats.connect(url)
    policy = Policy(min_runners=1, max_runners=2, target_catchup=1.0, assumed_runner_rate=50.0)
    scaler = Autoscaler(nats, LocalBackend(nats), policy)
    stop = asyncio.Event()
    loop = asyncio.create_task(scaler.run(stop, interval=0.25))
    pool = asyncio.create_task(follow_wishes(nats, cluster.pool, stop))  # as `wallaroo dev` does
    try:
        m = await apps.deploy(nats, APP, key=cluster.deploy_key)
        await apps.wait_idle(nats, m, timeout=60)
        sender = asyncio.create_task(ingest.send(nats, m, "lines", lines, "burst"))
        lag_at = await _first(lambda: _has_lag(nats, m))
        committed_at = await _first(lambda: _new_runner_committed(nats, "r1"))
        await sender
        return committed_at - lag_at
    finally:
        stop.set()
        await loop
        await pool
        await nats.close()


async def _first(cond, timeout: float = 60) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.01)
    return time.monotonic()


async def _has_lag(nats: Nats, m: Manifest) -> bool:
    return any(s.lag for s in await observe.stage_lags(nats, m))


async def _new_runner_committed(nats: Nats, runner: str) -> bool:
    for beat in await observe.runner_heartbeats(nats):
        if beat.id == runner:
            return any(p.commits > 0 for p in beat.partitions)
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--words", type=int, default=600_000)
    args = p.parse_args()
    lines = make_lines(args.words)
    rates = {}
    for n in (1, 2):
        with tempfile.TemporaryDirectory() as tmp, DevCluster(Path(tmp) / "c", runners=n) as c:
            os.environ["WALLAROO_CREDS"] = str(c.creds("deployer"))  # authentication is on
            rates[n] = asyncio.run(throughput(c.url, c.deploy_key, n, lines, args.words))
        print(f"{n} runner(s): {rates[n]:12,.0f} records/s")
    print(f"ratio 2 runners / 1 runner: {rates[2] / rates[1]:.2f}  (2 cores, nats-server shares them)")
    with tempfile.TemporaryDirectory() as tmp, DevCluster(Path(tmp) / "c", runners=1) as c:
        os.environ["WALLAROO_CREDS"] = str(c.creds("deployer"))
        took = asyncio.run(reaction(c.url, c, lines))
    print(f"autoscaler: lag appears -> new runner committing: {took:.2f} s")


if __name__ == "__main__":
    main()
