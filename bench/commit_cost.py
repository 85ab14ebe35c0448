"""What one commit round of the word count costs the runner's event loop, in CPU time.

    python bench/commit_cost.py [--rounds 200] [--blocks 7] [--records 100] [--profile]

At a steady input rate one runner's loop goes round its partitions: the source partition
commits what arrived, its outputs reach the keyed stage's partitions, and each of those
commits its share. At 20k records/s that loop is busy most of the time, so a round's CPU cost
is what latency waits on. This runs the runner's own PartitionWorkers (with their
Checkpointers, a file state store and the runner's metrics) against an embedded nats-server:
each round sends `--records` new words in one source message, then the source partition
polls and commits, then every keyed partition polls and commits, concurrently as in a runner.
CPU is this thread's: the loop, nats-py's reader and the inline user code. The baseline is
the same records through both stages' engines alone (the user code and state handling no
commit protocol can avoid), measured right after each block of rounds: this machine's speed
moves by up to 2x from second to second, and only figures taken side by side compare. It
prints the ratio per block and the block of the median ratio in microseconds: per round,
per commit, and the commit protocol's share per commit. `--profile` adds where the rounds'
time goes (cProfile, cumulative).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from wallaroo.control import apps
from wallaroo.core import codec
from wallaroo.core.engine import Batch, StageEngine
from wallaroo.core.names import AppNames
from wallaroo.core.packaging import load_app
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats, Out
from wallaroo.plan import Application
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.metrics import RunnerMetrics, RunnerView
from wallaroo_runtime.statestore import open_store

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "word_count" / "word_count.py"
WARM = 50  # rounds before measuring: consumers made, first batches on the worker's thread


class Rounds:
    def __init__(self, nats: Nats, slug: str, version: str, store: Path) -> None:
        self.app, _ = load_app(APP)
        self.nats, self.names = nats, AppNames(slug)
        metrics = RunnerMetrics("bench", lambda: RunnerView())
        cfg = CheckpointConfig(store=open_store(store.as_uri()))
        self.workers = [self._worker(version, stage.index, part, cfg, metrics)
                        for stage in self.app.stages for part in stage.parts]
        self.consumers: list[object] = []
        self.sent = 0

    def _worker(self, version: str, stage: int, part: int, cfg: CheckpointConfig,
                metrics: RunnerMetrics) -> PartitionWorker:
        st = self.app.stages[stage]
        checkpoints = Checkpointer(self.nats, cfg, self.app.slug, stage, part,
                                   self.names.log_stream, self.names.log(stage, part), st.stateful)
        return PartitionWorker(self.nats, self.app, version, st, part, WorkerConfig(), checkpoints,
                               observer=metrics.partition(self.app.slug, stage, part))

    async def start(self) -> None:
        for w in self.workers:
            await w.restore()
        self.consumers = [await w.open_consumer() for w in self.workers]

    async def round(self, records: int) -> int:
        """One source message of `records` new words, then every partition's poll; the
        commits made."""
        words = [f"w{self.sent + i}".encode() for i in range(records)]
        self.sent += records
        await self.nats.publish_all([Out(self.names.source(0, 0), codec.pack_batch(words),
                                         f"i:cost:{self.sent}")])
        before = sum(w.progress.commits for w in self.workers)
        source, keyed = self.workers[0], list(zip(self.workers[1:], self.consumers[1:], strict=True))
        self.consumers[0] = await source.poll(self.consumers[0])  # type: ignore[arg-type]
        await asyncio.gather(*(w.poll(c) for w, c in keyed))  # type: ignore[arg-type]
        return sum(w.progress.commits for w in self.workers) - before


class Engines:
    """Both stages' engines alone over the same rounds of new words: the baseline, run
    beside each block so that both see the same machine speed."""

    def __init__(self, app: Application) -> None:
        self.app = app  # the workers' own: loading it again would re-home its state class
        self.first = StageEngine(self.app, self.app.stages[0])
        self.second = [StageEngine(self.app, self.app.stages[1], p)
                       for p in range(self.app.stages[1].partitions)]
        self.tables: list[dict[str, bytes]] = [{} for _ in self.second]
        self.sent = 0

    def rounds(self, rounds: int, records: int) -> float:
        """CPU seconds of `rounds` rounds."""
        started = time.thread_time()
        for _ in range(rounds):
            words = (f"w{self.sent + i}".encode() for i in range(records))
            lines = [struct.pack(">I", len(w)) + w for w in words]
            self.sent += records
            batch = Batch()
            batch.add(self.sent, [None] * records, lines)
            for p, (keys, values) in self.first.attempt(batch, {}, {}).routed.items():
                downstream = Batch()
                downstream.add(self.sent, list(keys), values)
                self.tables[p].update(self.second[p].attempt(downstream, self.tables[p], {}).states)
        return time.thread_time() - started


@dataclass
class Block:
    loop: float  # CPU seconds a round, the runner's loop
    engines: float  # CPU seconds a round, the engines alone (measured right after)
    commits: float  # a round


async def measure(url: str, store: Path, args: argparse.Namespace) -> list[Block]:
    """`args.blocks` blocks of `args.rounds` rounds, each followed by the engines alone over
    as many rounds. Why pairs: this machine's speed moves by up to 2x from second to second
    (other tenants), so only figures measured side by side compare."""
    nats = await Nats.connect(url)
    try:
        manifest = await apps.deploy(nats, APP)
        r = Rounds(nats, manifest.slug, manifest.version, store)
        await r.start()
        engines = Engines(r.app)
        for _ in range(WARM):
            await r.round(args.records)
        engines.rounds(WARM, args.records)
        prof = cProfile.Profile() if args.profile else None
        blocks = []
        for _ in range(args.blocks):
            commits = 0
            started = time.thread_time()
            if prof:
                prof.enable()
            for _ in range(args.rounds):
                commits += await r.round(args.records)
            if prof:
                prof.disable()
            loop = time.thread_time() - started
            base = engines.rounds(args.rounds, args.records)
            blocks.append(Block(loop / args.rounds, base / args.rounds, commits / args.rounds))
        if prof:
            pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
        return blocks
    finally:
        await nats.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=200, help="rounds per block")
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--records", type=int, default=100, help="new words per round")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        blocks = asyncio.run(measure(server.url, Path(tmp) / "state", args))
    ratios = sorted(b.loop / b.engines for b in blocks)
    mid = blocks[[b.loop / b.engines for b in blocks].index(ratios[len(ratios) // 2])]
    per_commit = mid.loop / mid.commits
    print(f"{args.blocks} blocks of {args.rounds} rounds of {args.records} new words, "
          f"{mid.commits:.1f} commits a round; the block of the median ratio:")
    print(f"  runner loop      {1e6 * mid.loop:8.0f} us/round  {1e6 * per_commit:6.0f} us/commit  "
          f"{1e6 * mid.loop / args.records:6.1f} us/record")
    print(f"  engines alone    {1e6 * mid.engines:8.0f} us/round  {'':21}"
          f"{1e6 * mid.engines / args.records:6.1f} us/record (baseline)")
    print(f"  ratio            {ratios[len(ratios) // 2]:8.2f}x the engines alone (blocks: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}); the commit protocol "
          f"{1e6 * (mid.loop - mid.engines) / mid.commits:.0f} us/commit")


if __name__ == "__main__":
    main()
