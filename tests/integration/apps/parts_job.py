"""A bounded running word count (a job) whose output is part files, for `wallaroo run` tests.
From the deploying process's environment: JOB_INPUT (a file), JOB_OUTPUT (a directory or an
s3://bucket/prefix URL), JOB_S3_ENDPOINT (moto's URL, for an s3:// output), JOB_PAD (dots
after each line, for bigger parts that take longer to write). Every word seen gives a line
"word => n", so a validator checks each n exactly once across the parts."""

from __future__ import annotations

import os

from job_steps import running_count, split, word

import wallaroo as wl

PAD = " " + "." * int(os.environ["JOB_PAD"]) if os.environ.get("JOB_PAD") else ""


pipeline = (wl.source("lines", wl.FileSource(os.environ["JOB_INPUT"], bounded=True))
            .to(split).key_by(word).to(running_count(PAD))
            .to_sink(wl.PartsSink("counts", os.environ["JOB_OUTPUT"],
                                  endpoint_url=os.environ.get("JOB_S3_ENDPOINT"))))
app = wl.build_application("parts_job", pipeline, partitions=4)
