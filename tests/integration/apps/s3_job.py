"""A bounded word count over S3 objects (a job): S3_JOB_BUCKET, S3_JOB_ENDPOINT and JOB_OUTPUT
come from the environment of the deploying process. Totals per word at end of input."""

from __future__ import annotations

import os

from job_steps import split, totals, word

import wallaroo as wl

source = wl.S3Source(os.environ["S3_JOB_BUCKET"], "in/", endpoint_url=os.environ["S3_JOB_ENDPOINT"],
                     bounded=True)
pipeline = (wl.source("objects", source).to(split).key_by(word)
            .to(totals())
            .to_sink(wl.FileSink("totals", os.environ["JOB_OUTPUT"])))
app = wl.build_application("s3_job", pipeline, partitions=2)
