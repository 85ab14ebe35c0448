"""A bounded word count (a job) for `wallaroo run` tests. Input and output paths come from
the environment of the deploying process (they are baked into the deployed configs):
JOB_INPUT, JOB_OUTPUT; JOB_MODE "running" writes "word => n" for every word seen (a
validator checks each n exactly once), "totals" writes one "word n" per word from a count
window flushed at end of input. Lines starting with "bad" fail the decoder."""

from __future__ import annotations

import os

from job_steps import running_count, split, totals, word

import wallaroo as wl


@wl.decoder
def line(data: bytes) -> str:
    text = data.decode()
    if text.startswith("bad"):
        raise ValueError(f"a bad line: {text!r}")
    return text


step = running_count() if os.environ.get("JOB_MODE") == "running" else totals()
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
