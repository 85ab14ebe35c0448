"""A runner's start does not import what only some apps or stores need: the S3 client
(aiobotocore, with the aiohttp it brings) and the HTTP client of the HTTP sinks, a quarter of
a second of every runner's start between them."""

import subprocess
import sys


def test_a_runner_starts_without_the_s3_or_http_clients() -> None:
    probe = ("import sys, wallaroo.cli, wallaroo_runtime.runner, wallaroo_runtime.executor; "
             "print(sorted(m for m in ('aiohttp', 'aiobotocore') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
