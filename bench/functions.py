"""Serverless call overhead on one runner, against local baselines measured in the same run.

Prints `.remote` round-trip p50/p99 (sequential calls of a trivial function) next to a local
call and a `ProcessPoolExecutor(1).submit(f, x).result()` round trip; then `.map` calls/s over
many trivial inputs next to `ProcessPoolExecutor(2).map` (default and a larger chunksize).

    python bench/functions.py [--calls 500] [--map-items 20000] [--chunksize 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wallaroo.control import apps
from wallaroo.control.status import wait_rollout
from wallaroo.core import calls
from wallaroo.core.packaging import load_deployable
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APP = Path(__file__).resolve().parent / "apps" / "trivial_functions.py"
WARMUP = 50
AIM_REMOTE_P50_MS = 3.0
AIM_MAP_RATE = 5_000.0


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ordered = sorted(seconds)
    return (1000 * ordered[len(ordered) // 2],
            1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))])


def round_trips(call: Callable[[int], Any], n: int) -> list[float]:
    """Seconds each of `n` sequential calls took, after WARMUP untimed ones."""
    for x in range(WARMUP):
        call(x)
    times = []
    for x in range(n):
        start = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - start)
    return times


def rate(run_map: Callable[[range], Iterator[int]], items: int) -> float:
    """Calls/s of one map over `items` inputs, its results checked."""
    start = time.perf_counter()
    results = list(run_map(range(items)))
    elapsed = time.perf_counter() - start
    if results != [x + 1 for x in range(items)]:
        raise RuntimeError("a map returned wrong or reordered results")
    return items / elapsed


def baselines(fn: Callable[[int], int], calls_n: int, items: int, chunksize: int) -> dict[str, Any]:
    """Measured before the cluster starts: the pools fork a process with no threads yet."""
    found: dict[str, Any] = {"local": percentiles(round_trips(fn, calls_n))}
    progress("local calls done; ProcessPoolExecutor(1) round trips")
    with ProcessPoolExecutor(max_workers=1) as pool:
        found["pool1"] = percentiles(round_trips(lambda x: pool.submit(fn, x).result(), calls_n))
    progress(f"ProcessPoolExecutor(2).map over {items:,} inputs")
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(fn, range(WARMUP)))
        found["pool2_map"] = rate(lambda xs: pool.map(fn, xs), items)
        found["pool2_map_chunked"] = rate(lambda xs: pool.map(fn, xs, chunksize=chunksize), items)
    return found


async def deploy(url: str, key: Path) -> None:
    nats = await Nats.connect(url)
    try:
        manifest = await apps.deploy(nats, APP, key=key)
        state = await wait_rollout(nats, manifest, 60, min_ready=1)
        if state.failed or not state.ready:
            raise RuntimeError(f"the runner did not take {manifest.name}: {state.failed}")
    finally:
        await nats.close()


@contextmanager
def deployed(state_dir: Path) -> Iterator[None]:
    """A one-runner dev cluster running the app, where this process's calls go."""
    with DevCluster(state_dir, runners=1) as cluster:
        os.environ["WALLAROO_CREDS"] = str(cluster.creds("deployer"))  # authentication is on
        progress(f"cluster at {cluster.url}, runner log {state_dir / 'logs' / 'r0.log'}")
        asyncio.run(deploy(cluster.url, cluster.deploy_key))
        os.environ["WALLAROO_NATS"] = cluster.url
        try:
            yield
        finally:
            calls.close_portals()


def on_cluster(module: Any, calls_n: int, items: int) -> dict[str, Any]:
    fn, wide = module.remote_increment, module.remote_increment_wide
    progress(f".remote: {calls_n} sequential calls")
    found: dict[str, Any] = {"remote": percentiles(round_trips(fn.remote, calls_n))}
    for key, f in [("map", fn), ("map_wide", wide)]:
        progress(f".map over {items:,} inputs, concurrency {f.spec.concurrency}")
        list(f.map(range(WARMUP)))
        found[key] = rate(f.map, items)
    return found


def report_round_trips(f: dict[str, Any]) -> None:
    def ms(pair: tuple[float, float]) -> str:
        return f"p50 {pair[0]:8.4f} ms   p99 {pair[1]:8.4f} ms"

    (p50, p99), (pool50, pool99) = f["remote"], f["pool1"]
    print("round trip of one trivial call, sequential:")
    print(f"  local call                           {ms(f['local'])}")
    print(f"  ProcessPoolExecutor(1).submit        {ms(f['pool1'])}")
    print(f"  wallaroo .remote (1 runner)          {ms(f['remote'])}")
    print(f"  ratio .remote / process pool         p50 {p50 / pool50:6.1f}x      p99 {p99 / pool99:6.1f}x")
    verdict = "met" if p50 <= AIM_REMOTE_P50_MS else "MISSED"
    print(f"  aim: .remote p50 <= {AIM_REMOTE_P50_MS:g} ms: {verdict} ({p50:.2f} ms)")


def report_map(f: dict[str, Any], items: int, chunksize: int) -> None:
    pool1, pool_big = f["pool2_map"], f["pool2_map_chunked"]
    print(f"map over {items:,} trivial inputs:")
    print(f"  ProcessPoolExecutor(2).map, chunksize 1        {pool1:10,.0f} calls/s")
    print(f"  ProcessPoolExecutor(2).map, chunksize {chunksize:<8,} {pool_big:10,.0f} calls/s")
    for key, label in [("map", "concurrency 8 (default)"), ("map_wide", "concurrency 64")]:
        print(f"  wallaroo .map, 1 runner, {label:<23}{f[key]:10,.0f} calls/s   ratio to pool: "
              f"{f[key] / pool1:.2f} (chunksize 1), {f[key] / pool_big:.4f} (chunksize {chunksize})")
    best = max(f["map"], f["map_wide"])
    verdict = "met" if best >= AIM_MAP_RATE else "MISSED"
    print(f"  aim: .map >= {AIM_MAP_RATE:,.0f} calls/s on one runner: {verdict} (best {best:,.0f})")


def abandon(seconds: int) -> None:
    raise TimeoutError(f"the bench still runs after {seconds}s: abandoned")


def progress(text: str) -> None:
    print(f"[functions bench] {text}", file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=500, help="sequential round trips timed")
    p.add_argument("--map-items", type=int, default=20_000, help="inputs of each map")
    p.add_argument("--chunksize", type=int, default=500, help="the process pool's larger chunksize")
    p.add_argument("--timeout", type=int, default=900, help="seconds before the run is abandoned "
                   "(the cluster is still stopped)")
    args = p.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: abandon(args.timeout))
    signal.alarm(args.timeout)
    module = load_deployable(APP)[1]
    figures = baselines(module.increment, args.calls, args.map_items, args.chunksize)
    with tempfile.TemporaryDirectory() as tmp, deployed(Path(tmp) / "c"):
        figures |= on_cluster(module, args.calls, args.map_items)
    report_round_trips(figures)
    report_map(figures, args.map_items, args.chunksize)


if __name__ == "__main__":
    main()
