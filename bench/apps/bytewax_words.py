"""The job benchmark's word count as a Bytewax dataflow, with the same functions
(bench/apps/words.py): `python -m bytewax.run bytewax_words:flow -r DIR ...` with
BENCH_JOB_INPUT and BENCH_JOB_OUTPUT set."""

from __future__ import annotations

import os

import bytewax.operators as op
import words
from bytewax.connectors.files import FileSink, FileSource
from bytewax.dataflow import Dataflow

flow = Dataflow("words")
lines = op.input("lines", flow, FileSource(os.environ["BENCH_JOB_INPUT"]))
split = op.flat_map("split", lines, words.split)
keyed = op.map("one", op.key_on("word", split, words.word), lambda kv: (kv[0], 1))
totals = op.reduce_final("total", keyed, words.add)
# FileSink routes by key: (word, its line)
op.output("out", op.map("line", totals, lambda kv: (kv[0], words.line(*kv))),
          FileSink(os.environ["BENCH_JOB_OUTPUT"]))
