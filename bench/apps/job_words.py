"""Word count as a job (bench/job.py): a bounded file of lines -> words -> a total per word,
emitted at end of input (a global window: Bytewax's reduce_final). BENCH_JOB_INPUT and
BENCH_JOB_OUTPUT name the files, BENCH_JOB_SOURCE_PARTITIONS (default 1) how many partitions
the file is read into; the user functions are those of bench/apps/words.py, shared with the
Bytewax flow and the plain loop."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import words  # noqa: E402 - next to this file, shipped by value with the app

import wallaroo as wl  # noqa: E402


class Total(wl.Aggregation):
    def initial_accumulator(self) -> int:
        return 0

    def update(self, record: str, total: int) -> int:
        return words.add(total, 1)

    def combine(self, a: int, b: int) -> int:
        return words.add(a, b)

    def output(self, key: str, total: int) -> str:
        return words.line(key, total)


split = wl.computation_multi(name="split")(words.split)
word = wl.key_extractor(words.word)
source = wl.FileSource(os.environ["BENCH_JOB_INPUT"], bounded=True,
                       partitions=int(os.environ.get("BENCH_JOB_SOURCE_PARTITIONS", "1")))
pipeline = (wl.source("lines", source)
            .to(split).key_by(word).to(wl.global_windows().over(Total))
            .to_sink(wl.FileSink("totals", os.environ["BENCH_JOB_OUTPUT"])))
app = wl.build_application("bench_job", pipeline, partitions=8)
