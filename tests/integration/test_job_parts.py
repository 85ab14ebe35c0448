"""A job writing part files (PartsSink) under `wallaroo run` (real nats-server and runner
processes): the parts together hold every expected output line exactly once, nothing is
left in `_staging`, and a rerun of the finished job writes nothing new; to a directory and
to moto's S3 server."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUCKET, Moto
from wallaroo_runtime.connectors.framing import PARTS_STAGING
from wallaroo_runtime.statestore import S3Store

HERE = Path(__file__).parent
JOB = HERE / "apps" / "parts_job.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def run_job(tmp_path: Path, output: str, *args: str, endpoint: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}
    env.update(JOB_INPUT=str(tmp_path / "words.txt"), JOB_OUTPUT=output)
    if endpoint is not None:
        env["JOB_S3_ENDPOINT"] = endpoint
    return subprocess.run([sys.executable, "-m", "wallaroo", "run", str(JOB), *args], cwd=tmp_path,
                          env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=240)


def running_counts(path: Path, lines: int) -> collections.Counter[str]:
    """Write the input; the multiset of "word => n" lines the job must output."""
    vocab = [f"w{i}" for i in range(20)]
    text = [" ".join(vocab[(i * 7 + j * 3) % 20] for j in range(4)) for i in range(lines)]
    path.write_text("\n".join(text) + "\n")
    counts = collections.Counter(w for t in text for w in t.split())
    return collections.Counter(f"{w} => {n}" for w, c in counts.items() for n in range(1, c + 1))


def lines_in(parts: dict[str, bytes]) -> collections.Counter[str]:
    return collections.Counter(line for data in parts.values() for line in data.decode().splitlines())


def local_parts(target: Path) -> dict[str, bytes]:
    """What a reader sees: every name not starting with `_` or `.`."""
    return {p.name: p.read_bytes() for p in target.iterdir() if p.name[0] not in "_."}


def test_a_job_writes_parts_a_reader_can_trust(tmp_path: Path) -> None:
    expected = running_counts(tmp_path / "words.txt", 2000)
    target = tmp_path / "out"
    res = run_job(tmp_path, str(target))
    assert res.returncode == 0, res.stderr
    parts = local_parts(target)
    assert all(name.startswith("part-parts_job-s") and name.endswith(".txt") for name in parts)
    assert lines_in(parts) == expected
    assert not list((target / PARTS_STAGING).iterdir())

    listing = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    again = run_job(tmp_path, str(target))
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == listing
    refused = run_job(tmp_path, str(target), "--fresh")
    assert refused.returncode == 2 and f"delete {target}/part-parts_job-*" in refused.stderr


def test_a_job_writes_its_parts_to_s3(tmp_path: Path, moto: Moto) -> None:
    expected = running_counts(tmp_path / "words.txt", 500)
    res = run_job(tmp_path, f"s3://{BUCKET}/jobs/words", endpoint=moto.url)
    assert res.returncode == 0, res.stderr

    async def read_all() -> dict[str, bytes]:
        s3 = S3Store(BUCKET, "jobs/words", endpoint_url=moto.url)
        try:
            return {k: await s3.get(k) or b"" for k in await s3.list("")}
        finally:
            await s3.close()

    parts = asyncio.run(read_all())
    assert all(k.startswith("part-parts_job-s") for k in parts)
    assert lines_in(parts) == expected
