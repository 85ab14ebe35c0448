"""A bounded word count (a job) whose totals come out only at end of input (a global window
flushed then), into a stream sink: ended early, its totals would be missing or short. The
input path comes from FORGED_INPUT in the deploying process's environment."""

from __future__ import annotations

import os

from job_steps import split, totals, word

import wallaroo as wl


@wl.decoder
def line(data: bytes) -> str:
    return data.decode()


pipeline = (wl.source("lines", wl.FileSource(os.environ["FORGED_INPUT"], decoder=line, bounded=True))
            .to(split).key_by(word).to(totals())
            .to_sink(wl.StreamSink("totals", encoder=lambda s: s + "\n")))
app = wl.build_application("forged_job", pipeline, partitions=2)
