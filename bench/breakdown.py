"""Where a word count's time goes, per word, in microseconds: the runner's pieces measured
one by one in this process, next to the plain loop of the same user functions.

- user code: the app's decode/split/key/count/encode called in a plain loop (the baseline);
- engine: both stages' StageEngine.attempt over commit-sized batches, user code included
  (engine overhead = engine - user code);
- inter-stage: pickling the routed (keys, values) columns and unpickling them downstream;
- commit encode: both stages' CommitRecord.to_wire (state changes and outputs);
- NATS publish: what the commits put into JetStream (commit records, routed data, outputs),
  published with publish_all to an embedded file-backed nats-server (acks of inputs not
  included: one ack per input message, not per word).

    python bench/breakdown.py [--words 400000] [--batch 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wordcount import APP, make_lines, plain_loop

from wallaroo.control import apps
from wallaroo.core import codec
from wallaroo.core.engine import Batch, BatchResult, StageEngine
from wallaroo.core.names import AppNames, internal_msg_id
from wallaroo.core.packaging import load_app
from wallaroo.core.wire import CommitRecord
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats, Out


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    """The fastest of `runs` timings of fn(): the least disturbed by other processes."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


class Pipeline:
    """The word count's two stages run by their engines, keeping what each commit made."""

    def __init__(self, lines: list[bytes], batch: int) -> None:
        self.app, _ = load_app(APP)
        framed = [struct.pack(">I", len(line)) + line for line in lines]
        self.inputs = [framed[i:i + batch] for i in range(0, len(framed), batch)]
        self.first = StageEngine(self.app, self.app.stages[0])
        self.second = [StageEngine(self.app, self.app.stages[1], p)
                       for p in range(self.app.stages[1].partitions)]
        self.results: list[tuple[int, BatchResult]] = []  # (stage, result) per commit
        self.routed: list[dict[int, bytes]] = []

    def run(self, keep: bool = False) -> None:
        """Both stages over every input batch. Only `keep` holds on to what each commit
        made (for the other measures): a runner lets it go, and a heap grown by holding it
        all would make the garbage collector, not the engine, what this measures."""
        self.results, self.routed = [], []
        tables: list[dict[str, bytes]] = [{} for _ in self.second]
        for n, chunk in enumerate(self.inputs):
            batch = Batch()
            batch.add(n, [None] * len(chunk), chunk)
            first = self.first.attempt(batch, {}, {})
            if keep:
                self.results.append((0, first))
                self.routed.append({p: codec.dumps_columns(*cols) for p, cols in first.routed.items()})
            for p, (keys, values) in first.routed.items():
                downstream = Batch()
                downstream.add(n, list(keys), values)
                second = self.second[p].attempt(downstream, tables[p], {})
                tables[p].update(second.states)
                if keep:
                    self.results.append((1, second))

    def serialize(self) -> None:
        for routed in self.routed:
            for blob in routed.values():
                codec.loads_columns(blob)
        for (_, result) in self.results:
            if result.routed:
                {p: codec.dumps_columns(*cols) for p, cols in result.routed.items()}

    def records(self) -> list[CommitRecord]:
        return commit_records(self.app.slug, "counts", self.results)


def commit_records(slug: str, sink: str, results: list[tuple[int, BatchResult]]) -> list[CommitRecord]:
    """The commit record each result would make: its state changes, routed columns and
    outputs to `sink`."""
    names, recs = AppNames(slug), []
    for n, (stage, result) in enumerate(results, start=1):
        outs = [Out(names.data(1, p), codec.dumps_columns(*cols), internal_msg_id(f"s{stage}.0", n, p))
                for p, cols in sorted(result.routed.items())]
        outs += [Out(names.out(sink), codec.pack_batch(o), internal_msg_id(f"s{stage}.0", n, 99))
                 for o in result.sink_out.values() if o]
        recs.append(CommitRecord(n, n, n, {}, result.states, outs))
    return recs


async def publish(url: str, slug: str, records: list[CommitRecord], encoded: list[bytes]) -> float:
    """Seconds to put every commit record and its outputs into JetStream, commit by commit."""
    nats = await Nats.connect(url)
    try:
        await apps.ensure_streams(nats, slug)
        names = AppNames(slug)
        started = time.perf_counter()
        for rec, blob in zip(records, encoded, strict=True):
            await nats.publish_all([Out(names.log(0, 0), blob, f"c:{rec.commit_no}")])
            await nats.publish_all(rec.outs)
        return time.perf_counter() - started
    finally:
        await nats.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=4_000, help="lines per commit of stage 0")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    lines = make_lines(args.words)
    per_word = 1e6 / args.words
    user = per_word / max(plain_loop(lines) for _ in range(args.runs)) * args.words
    pipe = Pipeline(lines, args.batch)
    engine = best_of(args.runs, pipe.run) * per_word
    pipe.run(keep=True)
    serial = best_of(args.runs, pipe.serialize) * per_word
    records = pipe.records()
    encode = best_of(args.runs, lambda: [r.to_wire() for r in records]) * per_word
    encoded = [r.to_wire() for r in records]
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        nats_s = asyncio.run(publish(server.url, pipe.app.slug, records, encoded)) * per_word
    mib = sum(map(len, encoded)) / 2**20
    print(f"{args.words:,} words, {len(records)} commits ({mib:.1f} MiB of commit records)")
    rows = [("user code (plain loop, the baseline)", user), ("engine, user code included", engine),
            ("  engine overhead", engine - user), ("inter-stage pickling", serial),
            ("commit encode", encode), ("NATS publish (records + outputs)", nats_s)]
    for what, us in rows:
        print(f"  {what:<38} {us:7.3f} us/word  {us / user:5.2f}x user code")
    total = engine + serial + encode + nats_s
    print(f"  {'sum':<38} {total:7.3f} us/word  {total / user:5.2f}x user code "
          f"(~{1e6 / total:,.0f} words/s on one core)")


if __name__ == "__main__":
    main()
