"""examples/word_count/word_count.py's own functions (split, extract_word, count_word with a
WordTotal per word, encode_word_count) as a Bytewax streaming dataflow, for bench/wordcount.py:

    python -m bytewax.run bytewax_wordcount:flow -r DIR -s 5 -b 0

with BENCH_WC_INPUT (lines, one record each), BENCH_WC_OUTPUT (one line per word, as the
Wallaroo app's sink writes them) and BENCH_WC_TIMES (a JSON file written when the sink closes:
`first` = time.monotonic() when the first input batch was asked for, `last` = when the last
output batch was written, `outputs` = how many lines). CLOCK_MONOTONIC is system-wide on Linux,
so the parent can set these against its own clock (start-up = first - launch).

Needs PYTHONPATH to hold bench/apps and the toolkit (the example does `import wallaroo`)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.connectors.files import FileSource
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

# Imported as a module (not exec'd) so that WordTotal pickles by name in the snapshots.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "word_count"))
import word_count as wc  # noqa: E402

MARKS: dict[str, Any] = {"first": None, "last": None, "outputs": 0}


class _TimedSourcePart(StatefulSourcePartition[str, int]):
    """FileSource's partition, noting when the dataflow first asks for data."""

    def __init__(self, inner: StatefulSourcePartition[str, int]) -> None:
        self.inner = inner

    def next_batch(self) -> Iterable[str]:
        if MARKS["first"] is None:
            MARKS["first"] = time.monotonic()
        return self.inner.next_batch()

    def snapshot(self) -> int:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class TimedFileSource(FixedPartitionedSource[str, int]):
    """Bytewax's FileSource (one partition, resumable at a byte offset), timed."""

    def __init__(self, path: str) -> None:
        self.inner = FileSource(path)

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _TimedSourcePart:
        return _TimedSourcePart(self.inner.build_part(step_id, for_part, resume_state))


class _LineSinkPart(StatefulSinkPartition[str, int]):
    """FileSink's partition without its fsync per batch: JetStream, where the Wallaroo app's
    outputs go, syncs its files every 2 minutes by default, not per write; so both hand their
    outputs to the OS and no more. Notes when the last batch was written; its close is the last
    thing the dataflow does with it, so the marks are written there."""

    def __init__(self, path: Path, resume_state: int | None) -> None:
        self.f = path.open("a")
        self.f.seek(resume_state or 0)
        self.f.truncate()  # as FileSink: a resumed run drops what followed the snapshot

    def write_batch(self, values: list[str]) -> None:
        self.f.writelines(values)
        self.f.flush()
        MARKS["last"] = time.monotonic()
        MARKS["outputs"] += len(values)

    def snapshot(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()
        MARKS["closed"] = time.monotonic()
        Path(os.environ["BENCH_WC_TIMES"]).write_text(json.dumps(MARKS))


class LineSink(FixedPartitionedSink[str, int]):
    """One file, one partition, lines written as they are (encode_word_count ends them)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def list_parts(self) -> list[str]:
        return [str(self.path)]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _LineSinkPart:
        return _LineSinkPart(self.path, resume_state)


def count(total: wc.WordTotal | None, word: str) -> tuple[wc.WordTotal, wc.WordCount]:
    """Bytewax's keyed state in place of Wallaroo's: one WordTotal per word, made on first sight."""
    total = total if total is not None else wc.WordTotal()
    return total, wc.count_word(word, total)


flow = Dataflow("word_count")
lines = op.input("lines", flow, TimedFileSource(os.environ["BENCH_WC_INPUT"]))
words = op.key_on("key", op.flat_map("split", lines, wc.split), wc.extract_word)
counts = op.stateful_map("count", words, count)
op.output("out", op.map_value("encode", counts, wc.encode_word_count),
          LineSink(Path(os.environ["BENCH_WC_OUTPUT"])))
