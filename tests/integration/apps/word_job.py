"""A bounded word count (a job) for `wallaroo run` tests. Input and output paths come from
the environment of the deploying process (they are baked into the deployed configs):
JOB_INPUT, JOB_OUTPUT; JOB_MODE "running" writes "word => n" for every word seen (a
validator checks each n exactly once), "totals" writes one "word n" per word from a count
window flushed at end of input. Lines starting with "bad" fail the decoder."""

from __future__ import annotations

import os

import wallaroo as wl


@wl.decoder
def line(data: bytes) -> str:
    text = data.decode()
    if text.startswith("bad"):
        raise ValueError(f"a bad line: {text!r}")
    return text


@wl.computation_multi(name="split")
def split(text: str) -> list[str]:
    return text.split()


@wl.key_extractor
def word(w: str) -> str:
    return w


class Seen:
    n = 0


@wl.state_computation(name="running count", state=Seen)
def running(w: str, seen: Seen) -> str:
    seen.n += 1
    return f"{w} => {seen.n}"


class Total(wl.Aggregation):
    def initial_accumulator(self) -> int:
        return 0

    def update(self, record: str, total: int) -> int:
        return total + 1

    def combine(self, a: int, b: int) -> int:
        return a + b

    def output(self, key: str, total: int) -> str:
        return f"{key} {total}"


step = running if os.environ.get("JOB_MODE") == "running" else wl.count_windows(10**9).over(Total)
pipeline = (wl.source("lines", wl.FileSource(os.environ["JOB_INPUT"], decoder=line, bounded=True))
            .to(split).key_by(word).to(step)
            .to_sink(wl.FileSink("counts", os.environ["JOB_OUTPUT"])))
app = wl.build_application("word_job", pipeline, partitions=4)

if os.environ.get("JOB_SLOW"):  # a job slow enough to still run when a test looks at it
    import time

    delay = float(os.environ["JOB_SLOW"])  # read here: runners do not have the variable

    @wl.computation(name="slowly")
    def slowly(text: str) -> str:
        time.sleep(delay)
        return text

    pipeline = (wl.source("lines", wl.FileSource(os.environ["JOB_INPUT"], decoder=line, bounded=True))
                .to(slowly).to(split).key_by(word).to(step)
                .to_sink(wl.FileSink("counts", os.environ["JOB_OUTPUT"])))
    app = wl.build_application("slow_job", pipeline, partitions=4)
