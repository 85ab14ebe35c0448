"""How the word count scales on this machine, each figure a ratio against a baseline measured
in the same run:

1. Runner processes: one runner vs two (DevCluster runners=1 vs 2), the same app (keyed stage
   16 partitions, source stage `--source-partitions`, 4 by default) and input: records/s of
   each and the ratio. The printout says how many cores the machine has: nats-server and the
   sender (this process) run on the same cores, so on 2 cores two runners cannot reach 2x.
2. Partitions: one runner, the same input, the keyed stage at 16, 64 and 256 partitions (the
   source stage stays at `--source-partitions`: it is set apart, on the source): records/s
   and CPU time per record, with the ratios against 16 partitions. The one-runner row of
   table 1 is this table's 16-partition row.

   CPU time per record (both tables), in microseconds: of the runners (summed) and of
   nats-server from /proc/<pid>/stat (utime + stime, all threads), of the sender from
   time.process_time(), over the timed window (so the runner's idle polling of its partitions
   while the records flow counts too). "cores busy" is the CPU seconds of all three per second
   of the window: well under the core count means the run was not CPU-bound, or other work on
   a shared machine took the rest (the load average is printed at start and end).
3. The autoscaler's reaction: from "lag appears" to "the runner it added commits" (not in
   `--quick`; `--skip-autoscaler` leaves it out).

The workload is bench/apps/parallel_word_count.py (examples/word_count's semantics, a
partitioned source) over the lines bench/wordcount.py makes (the Bill of Rights' words, 10 a
line, `--words` in all), exactly-once, file-backed JetStream. The partition count of an app
is fixed at its first deploy, so each configuration runs in a fresh DevCluster with its own
app. records/s: one record = one word out, timed from the first line sent to every output
committed (the app's work-queue data stream empty: see `drained`), after deploy and workers
up, as bench/wordcount.py; then every output is counted (one per word, else the run fails).

    python bench/scaling.py [--words 2000000] [--repeats 3] [--source-partitions 4]
                            [--skip-autoscaler]
    quick (a smoke run, figures meaningless): python bench/scaling.py --quick

`--repeats N` runs every configuration N times, round by round, and shows the median by
records/s (with that run's CPU figures): on a shared machine, one run can land on a busy moment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wallaroo.control import apps, ingest, outputs
from wallaroo.core import observe
from wallaroo.core.names import ASSIGN_BUCKET, AppNames
from wallaroo.core.wire import Assignment, Manifest
from wallaroo.local.dev import DevCluster, follow_wishes
from wallaroo.nats import Nats
from wallaroo_runtime.autoscale.backends import LocalBackend
from wallaroo_runtime.autoscale.loop import Autoscaler
from wallaroo_runtime.autoscale.policy import Policy

sys.path.insert(0, str(Path(__file__).parent))
from wordcount import _pid, _progress, make_lines  # noqa: E402

APP = Path(__file__).parent / "apps" / "parallel_word_count.py"
PARTITIONS = (16, 64, 256)  # keyed stage; the first is the baseline, and table 1's count
QUICK_WORDS = 20_000
TICKS = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU time in these
# CPU time per record, µs, from the first line sent to idle: the runners' (summed) and
# nats-server's from /proc/<pid>/stat, the sender's (this process) from time.process_time().
CPU_COLUMNS = ("runner µs/rec", "nats µs/rec", "sender µs/rec")
CPU_CAPTION = "µs/rec: CPU time per record; cores busy: CPU s of all three per s"
console = Console(width=120)  # a log is no terminal: keep rows whole


@dataclass(frozen=True)
class Run:
    runners: int
    partitions: int
    words: int
    rate: float  # records/s
    runner_cpu: float  # s, all runners together, from the first line sent to idle
    server_cpu: float  # s, nats-server, the same window
    sender_cpu: float  # s, this process (publishing the lines, polling for idle)

    def us_per_record(self, cpu: float) -> float:
        return cpu / self.words * 1e6

    @property
    def cores_busy(self) -> float:
        """CPU seconds of all the processes measured per second of the run: near the number
        of cores, the machine, not the runners, bounds the rate."""
        return (self.runner_cpu + self.server_cpu + self.sender_cpu) * self.rate / self.words

    def cpu_cells(self) -> list[str]:
        return [f"{self.us_per_record(c):.1f}" for c in (self.runner_cpu, self.server_cpu,
                                                         self.sender_cpu)]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        # Split after the ")" closing the command name, which may hold spaces: index 0 is then
        # field 3 (state), so utime (field 14) is index 11 and stime (15) index 12.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def until(cond: Callable[[], Awaitable[bool]], what: str, timeout: float) -> float:
    """Poll `cond` until it holds (the time it did) or fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def spread_over(nats: Nats, m: Manifest, n: int) -> None:
    """Every partition assigned, over exactly `n` runners."""
    wanted = sum(s.partitions for s in m.stages)

    async def spread() -> bool:
        raw = await nats.kv_get(ASSIGN_BUCKET, m.slug)
        owners = Assignment.from_wire(raw).owners if raw else {}
        return len(owners) >= wanted and len(set(owners.values())) == n

    await until(spread, f"{m.name}'s {wanted} partitions assigned over {n} runner(s)", 60)


async def measure(cluster: DevCluster, partitions: int, source_partitions: int,
                  lines: list[bytes], words: int) -> Run:
    """Deploy the app with `partitions`, wait for the workers, then time `lines` through it."""
    nats = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
    try:
        args = ["--partitions", str(partitions), "--source-partitions", str(source_partitions)]
        m = await apps.deploy(nats, APP, args, key=cluster.deploy_key)
        await spread_over(nats, m, len(cluster.runners))
        await apps.wait_idle(nats, m, timeout=60 + partitions / 4)  # consumers created
        runners = [_pid(r.proc) for r in cluster.runners]
        server = _pid(cluster.server.proc)
        before = [cpu_seconds(p) for p in (*runners, server)]
        sender_before = time.process_time()
        start = time.perf_counter()
        await ingest.send(nats, m, "lines", lines, "bench", progress=_progress(words))
        # Bounded, with room for a slow shared machine (as bench/wordcount.py).
        await until(lambda: drained(nats, m), f"{m.name} through its input", 120 + words / 5_000)
        elapsed = time.perf_counter() - start
        used = [cpu_seconds(p) - b for p, b in zip((*runners, server), before, strict=True)]
        sender = time.process_time() - sender_before
        print(file=sys.stderr)
        await apps.wait_idle(nats, m, timeout=60)  # every consumer agrees, outside the timing
        await check_outputs(nats, m, words)
        return Run(len(runners), partitions, words, words / elapsed, sum(used[:-1]), used[-1],
                   sender)
    finally:
        await nats.close()


async def drained(nats: Nats, m: Manifest) -> bool:
    """No message left in the app's data stream. It is a work queue: a batch leaves it when
    acked, and a stage acks its input only after publishing that input's outputs, so empty
    means every output is committed. One request whatever the partition count, where
    apps.wait_idle asks every partition's consumer (260 requests a poll at 256 partitions):
    that would load nats-server and this process in proportion to the partitions measured."""
    names = AppNames(m.slug)
    subjects, _ = names.streams()[names.data_stream]
    return sum([await nats.subject_count(names.data_stream, s) for s in subjects]) == 0


async def check_outputs(nats: Nats, m: Manifest, words: int) -> None:
    """One output per word, else the rate above measured something else (outside the timing)."""
    seen = 0

    async def count() -> None:
        nonlocal seen
        async for _, _, outs in outputs.tail(nats, m, None):
            seen += len(outs)
            if seen >= words:
                return

    timeout = 60 + words / 20_000
    try:
        await asyncio.wait_for(count(), timeout)
    except TimeoutError:
        raise SystemExit(f"{m.name}: {seen:,} outputs for {words:,} words after "
                         f"{timeout:.0f} s; figures not valid") from None
    if seen != words:
        raise SystemExit(f"{m.name}: {seen:,} outputs for {words:,} words; figures not valid")


def run(runners: int, partitions: int, source_partitions: int, lines: list[bytes],
        words: int) -> Run:
    """One configuration in a fresh DevCluster: no other app's partitions poll on its runners."""
    console.print(f"{runners} runner(s), keyed stage {partitions} partitions ...", style="dim")
    with tempfile.TemporaryDirectory(prefix="wl-bench-scaling-") as tmp, \
            DevCluster(Path(tmp) / "c", runners=runners) as cluster:
        return asyncio.run(measure(cluster, partitions, source_partitions, lines, words))


def runners_table(one: Run, two: Run, source_partitions: int) -> Table:
    cores = os.cpu_count()
    t = Table(title=f"1 vs 2 runner processes, keyed stage {one.partitions} partitions, "
                    f"source {source_partitions}, {one.words:,} words",
              caption=f"this machine has {cores} cores, shared by the runners, nats-server and "
                      "the sender (this process):\n"
                      f"2 runner processes on {cores} cores cannot reach 2x; {CPU_CAPTION}")
    for col in ("runners", "records/s", "vs 1 runner", *CPU_COLUMNS, "cores busy"):
        t.add_column(col, justify="right")
    for r in (one, two):
        t.add_row(str(r.runners), f"{r.rate:,.0f}", f"{r.rate / one.rate:.2f}", *r.cpu_cells(),
                  f"{r.cores_busy:.2f}")
    return t


def partitions_table(runs: list[Run], source_partitions: int) -> Table:
    base = runs[0]
    t = Table(title=f"keyed stage partitions on 1 runner (source {source_partitions}), "
                    f"{base.words:,} words",
              caption=f"vs: ratio against {base.partitions} partitions; {CPU_CAPTION}")
    vs = f"vs {base.partitions}"
    for col in ("partitions", "records/s", vs, CPU_COLUMNS[0], vs, CPU_COLUMNS[1], vs,
                CPU_COLUMNS[2], "cores busy"):
        t.add_column(col, justify="right")
    for r in runs:
        runner, server, sender = r.cpu_cells()
        t.add_row(str(r.partitions), f"{r.rate:,.0f}", f"{r.rate / base.rate:.2f}",
                  runner, f"{r.runner_cpu / base.runner_cpu:.2f}",
                  server, f"{r.server_cpu / base.server_cpu:.2f}", sender, f"{r.cores_busy:.2f}")
    return t


async def reaction(cluster: DevCluster, lines: list[bytes], source_partitions: int) -> float:
    """Seconds from the first observed lag to the first commit of the runner added for it."""
    nats = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
    policy = Policy(min_runners=1, max_runners=2, target_catchup=1.0, assumed_runner_rate=50.0)
    scaler = Autoscaler(nats, LocalBackend(nats), policy)
    stop = asyncio.Event()
    loop = asyncio.create_task(scaler.run(stop, interval=0.25))
    pool = asyncio.create_task(follow_wishes(nats, cluster.pool, stop))  # as `wallaroo dev` does
    sender: asyncio.Task[ingest.Sent] | None = None
    try:
        args = ["--partitions", str(PARTITIONS[0]), "--source-partitions", str(source_partitions)]
        m = await apps.deploy(nats, APP, args, key=cluster.deploy_key)
        await apps.wait_idle(nats, m, timeout=60)
        sender = asyncio.create_task(ingest.send(nats, m, "lines", lines, "burst"))
        lag_at = await until(lambda: _has_lag(nats, m), "lag observed", 60)
        committed_at = await until(lambda: _new_runner_committed(nats, "r1"),
                                   "the added runner r1 committing", 60)
        await sender
        return committed_at - lag_at
    finally:
        if sender is not None:
            sender.cancel()  # still sending when a wait above timed out: no send after close
        stop.set()
        await loop
        await pool
        await nats.close()


async def _has_lag(nats: Nats, m: Manifest) -> bool:
    return any(s.lag for s in await observe.stage_lags(nats, m))


async def _new_runner_committed(nats: Nats, runner: str) -> bool:
    for beat in await observe.runner_heartbeats(nats):
        if beat.id == runner:
            return any(p.commits > 0 for p in beat.partitions)
    return False


def autoscaler_line(lines: list[bytes], source_partitions: int) -> str:
    with tempfile.TemporaryDirectory(prefix="wl-bench-scaling-") as tmp, \
            DevCluster(Path(tmp) / "c", runners=1) as cluster:
        try:
            took = asyncio.run(reaction(cluster, lines, source_partitions))
        except TimeoutError as e:  # e.g. an input too small to outlast a runner's start-up
            return (f"autoscaler: not measured ({e}); a larger --words keeps the lag up while "
                    "the added runner starts")
    return f"autoscaler: lag appears -> new runner committing: {took:.2f} s"


def measure_all(repeats: int, source_partitions: int, lines: list[bytes], words: int
                ) -> list[Run]:
    """(runners, keyed partitions): 1 x 16, 2 x 16, 1 x 64, 1 x 256, each the median run by
    records/s of `repeats`. Rounds go over every configuration in turn, so a load that other
    work puts on the machine for a while falls on all of them alike."""
    configs = [(1, PARTITIONS[0]), (2, PARTITIONS[0]), *((1, n) for n in PARTITIONS[1:])]
    rounds = [[run(r, n, source_partitions, lines, words) for r, n in configs]
              for _ in range(repeats)]
    return [sorted(runs, key=lambda x: x.rate)[repeats // 2] for runs in zip(*rounds, strict=True)]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--words", type=int, default=2_000_000, help="input size, each configuration")
    p.add_argument("--source-partitions", type=int, default=4, help="the source stage's, in all runs")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each configuration; the median by records/s is shown")
    p.add_argument("--skip-autoscaler", action="store_true", help="no autoscaler reaction run")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_WORDS:,} words, no autoscaler run")
    args = p.parse_args()
    if min(args.words, args.source_partitions, args.repeats) < 1:
        p.error("--words, --source-partitions and --repeats must be >= 1")
    if args.quick:
        args.words, args.repeats, args.skip_autoscaler = QUICK_WORDS, 1, True
    return args


def main() -> None:
    args = parse_args()
    console.print(f"{os.cpu_count()} cores; load average at start "
                  f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    lines = make_lines(args.words)
    sp = args.source_partitions
    base, two, *more = measure_all(args.repeats, sp, lines, args.words)
    console.print(runners_table(base, two, sp))
    console.print(partitions_table([base, *more], sp))
    if args.repeats > 1:
        console.print(f"each row: the run of median records/s of {args.repeats}, its CPU figures")
    if not args.skip_autoscaler:
        console.print(autoscaler_line(lines, sp))
    console.print(f"load average at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
