"""Where the job path's time goes (bench/job.py's word count job: lines -> words -> a total
per word at end of input, the totals folded ahead of the shuffle), per word, in nanoseconds:
the runner's pieces measured one by one in this process, next to the plain loop of the same
user functions (bench/apps/words.py).

- user code: split, key, add and the output line called in a plain loop (the baseline);
- source: cutting the file into windows and batches of lines and packing each batch, as the
  file source does before it publishes;
- engine: stage 0's StageEngine.attempt over each fetched batch (decode, split, key, the fold
  per key into partials) and the keyed stage's over the partials it is sent, then its flush
  at end of input; user code included (engine overhead = engine - user code);
- inter-stage: unpacking the source batches and pickling the partials' columns and
  unpickling them downstream;
- commit encode: both stages' CommitRecord.to_wire;
- NATS publish: the source batches, commit records and routed partials, put into JetStream
  with publish_all on an embedded file-backed nats-server (fetching and acking not included).

    python bench/job_breakdown.py [--words 2000000] [--fetch 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from breakdown import best_of, commit_records, publish

from wallaroo.core import codec
from wallaroo.core.engine import Batch, BatchResult, StageEngine
from wallaroo.core.names import AppNames
from wallaroo.core.packaging import load_app
from wallaroo.core.wire import CommitRecord
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats, Out
from wallaroo_runtime.connectors.framing import batches_in, window_end
from wallaroo_runtime.connectors.sources import BATCH_RECORDS, WINDOW_RECORDS

ROOT = Path(__file__).resolve().parents[1]
JOB_APP = ROOT / "bench" / "apps" / "job_words.py"
sys.path.insert(0, str(ROOT / "bench" / "apps"))
import job  # noqa: E402 - bench/job.py: the input file and the plain loop


def cut(data: bytes) -> list[bytes]:
    """The file source's work before publishing: windows, batches, packed."""
    packed, pos = [], 0
    while pos < len(data):
        end = window_end(data, pos, WINDOW_RECORDS, final=True)
        packed += [codec.pack_batch(b.records) for b in batches_in(data, pos, end, base=0,
                                                                   size=BATCH_RECORDS)]
        pos = end
    return packed


class JobPipeline:
    """Both stages of the job over the source's batches, `fetch` messages per stage-0 commit
    (the worker's fetch_batch), then the keyed stage's end-of-input flush."""

    def __init__(self, packed: list[bytes], fetch: int) -> None:
        self.app, _ = load_app(JOB_APP)
        self.fetch = fetch
        self.commits = [packed[i:i + fetch] for i in range(0, len(packed), fetch)]
        self.first = StageEngine(self.app, self.app.stages[0])
        self.second = [StageEngine(self.app, self.app.stages[1], p)
                       for p in range(self.app.stages[1].partitions)]
        self.results: list[tuple[int, BatchResult]] = []

    def run(self, keep: bool = False) -> None:
        self.results = []
        tables: list[dict[str, bytes]] = [{} for _ in self.second]
        for n, msgs in enumerate(self.commits):
            batch = Batch()
            for seq, blob in enumerate(msgs):
                raws = codec.unpack_batch(blob)
                batch.add(n * self.fetch + seq, [None] * len(raws), raws)
            first = self.first.attempt(batch, {}, {})
            self._keep(keep, 0, first)
            for p, (keys, values) in first.routed.items():
                downstream = Batch()
                downstream.add(n, list(keys), values)
                second = self.second[p].attempt(downstream, tables[p], {})
                tables[p].update(second.states)
                self._keep(keep, 1, second)
        for p, engine in enumerate(self.second):
            self._keep(keep, 1, engine.end_of_input(tables[p]))

    def _keep(self, keep: bool, stage: int, result: BatchResult) -> None:
        if keep:  # only then: a heap grown by holding it all would be measured instead
            self.results.append((stage, result))

    def serialize(self, packed: list[bytes]) -> None:
        for blob in packed:
            codec.unpack_batch(blob)
        for _, result in self.results:
            for keys, values in result.routed.values():
                codec.loads_columns(codec.dumps_columns(keys, values))

    def records(self) -> list[CommitRecord]:
        return commit_records(self.app.slug, "totals", self.results)


def plain(path: Path) -> float:
    seconds, _ = job.plain_loop(path)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=2_000_000)
    parser.add_argument("--fetch", type=int, default=16, help="source messages per stage-0 commit")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "words.txt"
        job.make_input(path, args.words)
        os.environ.update(BENCH_JOB_INPUT=str(path), BENCH_JOB_OUTPUT=str(Path(tmp) / "out.txt"))
        data = path.read_bytes()
        measure(args, path, data, Path(tmp))


def measure(args: argparse.Namespace, path: Path, data: bytes, tmp: Path) -> None:
    ns = 1e9 / args.words
    user = min(plain(path) for _ in range(args.runs)) * ns
    source = best_of(args.runs, lambda: cut(data)) * ns
    packed = cut(data)
    pipe = JobPipeline(packed, args.fetch)
    engine = best_of(args.runs, pipe.run) * ns
    pipe.run(keep=True)
    serial = best_of(args.runs, lambda: pipe.serialize(packed)) * ns
    records = pipe.records()
    encode = best_of(args.runs, lambda: [r.to_wire() for r in records]) * ns
    encoded = [r.to_wire() for r in records]
    with NatsServer(tmp / "nats") as server:
        nats_s = asyncio.run(publish(server.url, pipe.app.slug, records, encoded)) * ns
        nats_s += asyncio.run(publish_source(server.url, pipe.app.slug, packed)) * ns
    partials = sum(len(k) for _, r in pipe.results for k, _ in r.routed.values())
    print(f"{args.words:,} words, {len(packed):,} source batches, {len(records):,} commits, "
          f"{partials:,} partials crossed the shuffle ({partials / args.words:.3f} a word)")
    rows = [("user code (plain loop, the baseline)", user), ("source: cut + pack", source),
            ("engine, user code included", engine), ("  engine overhead", engine - user),
            ("inter-stage (unpack, partials pickled)", serial), ("commit encode", encode),
            ("NATS publish (source, commits, partials)", nats_s)]
    for what, value in rows:
        print(f"  {what:<42} {value:6.0f} ns/word  {value / user:5.2f}x user code")
    total = source + engine + serial + encode + nats_s
    print(f"  {'sum':<42} {total:6.0f} ns/word  {total / user:5.2f}x user code "
          f"(~{1e9 / total:,.0f} words/s on one core)")


async def publish_source(url: str, slug: str, packed: list[bytes]) -> float:
    """Seconds to publish the source's batches as the file source does: a window at a time
    (WINDOW_RECORDS / BATCH_RECORDS batches per publish_all)."""
    names, per_window = AppNames(slug), WINDOW_RECORDS // BATCH_RECORDS
    nats = await Nats.connect(url)
    try:
        started = time.perf_counter()
        for i in range(0, len(packed), per_window):
            await nats.publish_all([Out(names.source(0, 0), blob, f"src:{i + j}")
                                    for j, blob in enumerate(packed[i:i + per_window])])
        return time.perf_counter() - started
    finally:
        await nats.close()


if __name__ == "__main__":
    main()
