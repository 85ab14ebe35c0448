"""A bounded word count over S3 objects (a job): S3_JOB_BUCKET, S3_JOB_ENDPOINT and JOB_OUTPUT
come from the environment of the deploying process. Totals per word at end of input."""

from __future__ import annotations

import os

import wallaroo as wl


@wl.computation_multi(name="split")
def split(text: str) -> list[str]:
    return text.split()


@wl.key_extractor
def word(w: str) -> str:
    return w


class Total(wl.Aggregation):
    def initial_accumulator(self) -> int:
        return 0

    def update(self, record: str, total: int) -> int:
        return total + 1

    def combine(self, a: int, b: int) -> int:
        return a + b

    def output(self, key: str, total: int) -> str:
        return f"{key} {total}"


source = wl.S3Source(os.environ["S3_JOB_BUCKET"], "in/", endpoint_url=os.environ["S3_JOB_ENDPOINT"],
                     bounded=True)
pipeline = (wl.source("objects", source).to(split).key_by(word)
            .to(wl.count_windows(10**9).over(Total))
            .to_sink(wl.FileSink("totals", os.environ["JOB_OUTPUT"])))
app = wl.build_application("s3_job", pipeline, partitions=2)
