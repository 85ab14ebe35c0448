"""Jobs: an app whose sources are all bounded runs to its end under `wallaroo run` (real
nats-server and runner processes), flushes its windows at end of input, reports dead letters
through its exit code, and a rerun resumes instead of starting over."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import BUCKET, REGION, Moto
from wallaroo.control import apps
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats
from wallaroo_runtime.statestore import S3Store

HERE = Path(__file__).parent
JOB = HERE / "apps" / "word_job.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def run_job(tmp_path: Path, *args: str, mode: str = "totals", input_file: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}
    env.update(JOB_INPUT=str(input_file or tmp_path / "words.txt"),
               JOB_OUTPUT=str(tmp_path / "out.txt"), JOB_MODE=mode)
    return subprocess.run([sys.executable, "-m", "wallaroo", "run", str(JOB), *args], cwd=tmp_path,
                          env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=240)


def words_file(path: Path, lines: int, extra: str = "") -> collections.Counter[str]:
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    text = [" ".join(vocab[(i * 7 + j * 3) % (j + 2)] for j in range(5)) for i in range(lines)]
    path.write_text("\n".join(text) + "\n" + extra)
    return collections.Counter(w for t in text for w in t.split())


def test_a_job_runs_to_its_end_flushing_its_windows_and_a_rerun_resumes(tmp_path: Path) -> None:
    # No newline at the end: a bounded file's last line counts without waiting.
    expected = words_file(tmp_path / "words.txt", 3000, extra="omega omega")
    expected["omega"] += 2
    res = run_job(tmp_path)
    assert res.returncode == 0, res.stderr
    totals = dict(line.split() for line in (tmp_path / "out.txt").read_text().splitlines())
    assert {w: int(n) for w, n in totals.items()} == dict(expected)
    assert "partition(s) flushed" in res.stderr and "dead letter" not in res.stderr
    assert "3,001 record(s) processed" in res.stderr
    # Run again: the job finished, so it ends at once and writes nothing more.
    before = (tmp_path / "out.txt").read_text()
    again = run_job(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "3,001 record(s) processed in all" in again.stderr  # the count is committed
    assert (tmp_path / "out.txt").read_text() == before
    # --fresh starts over, but never on top of an earlier run's output.
    refused = run_job(tmp_path, "--fresh")
    assert refused.returncode == 2 and "delete" in refused.stderr and "out.txt.commit" in refused.stderr
    (tmp_path / "out.txt").unlink()
    (tmp_path / "out.txt.commit").unlink()
    fresh = run_job(tmp_path, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "out.txt").read_text().count("\n") == len(expected)


def test_a_job_on_several_runners_is_deployed_once_all_run_so_no_partition_moves(tmp_path: Path) -> None:
    """Deployed as soon as the first runner ran, the job started there and moved half its
    partitions to the second when it joined (a handoff and a restore each)."""
    expected = words_file(tmp_path / "words.txt", 3000)
    res = run_job(tmp_path, "--runners", "2", "--state-dir", str(tmp_path / "st"))
    assert res.returncode == 0, res.stderr
    totals = dict(line.split() for line in (tmp_path / "out.txt").read_text().splitlines())
    assert {w: int(n) for w, n in totals.items()} == dict(expected)
    assert "3,000 record(s) processed" in res.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "st" / "logs").glob("r*.log"))
    assigned = [line.split(" INFO ")[1] for line in logs.splitlines() if "assigned word_job" in line]
    assert assigned and all("over 2 runner(s)" in line for line in assigned), assigned


def test_dead_letters_make_the_job_exit_1_and_are_shown(tmp_path: Path) -> None:
    expected = words_file(tmp_path / "words.txt", 50, extra="bad line one\nbad\x1b[31m two\n")
    res = run_job(tmp_path, mode="running")
    assert res.returncode == 1, res.stderr
    assert "2 dead letter(s)" in res.stderr
    assert "decode_error" in res.stderr and "bad line one" in res.stderr
    assert "\x1b" not in res.stderr  # control characters escaped
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert len(lines) == sum(expected.values())


def test_a_missing_input_file_is_an_error_naming_it(tmp_path: Path) -> None:
    res = run_job(tmp_path, input_file=tmp_path / "nowhere.txt")
    assert res.returncode == 2
    assert "nowhere.txt, which is no file" in res.stderr
    assert "Traceback" not in res.stderr


def cli(*args: str, cluster: DevCluster, role: str = "client") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WALLAROO_NATS", "WALLAROO_AUTH_DIR")}
    env["WALLAROO_CREDS"] = str(cluster.creds(role))
    return subprocess.run([sys.executable, "-m", "wallaroo", *args, "--nats", cluster.url], env=env,
                          text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)


def deploy_job(cluster: DevCluster, tmp_path: Path, **env: str) -> Manifest:
    async def body() -> Manifest:
        nats = await Nats.connect(cluster.url)
        try:
            return await apps.deploy(nats, JOB)
        finally:
            await nats.close()

    saved = dict(os.environ)
    os.environ.update(JOB_INPUT=str(tmp_path / "words.txt"), JOB_OUTPUT=str(tmp_path / "out.txt"),
                      **env)
    try:
        return asyncio.run(body())
    finally:
        os.environ.clear()
        os.environ.update(saved)


def eventually(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.1)


def test_jobs_lists_jobs_and_cancel_stops_one_that_a_rerun_resumes(tmp_path: Path) -> None:
    expected = words_file(tmp_path / "words.txt", 40)
    with DevCluster(tmp_path / "c", runners=1) as cluster:
        deploy_job(cluster, tmp_path, JOB_SLOW="0.2", JOB_MODE="running")
        eventually(lambda: "slow_job" in cli("jobs", cluster=cluster).stdout, "the job listed")
        listing = cli("jobs", cluster=cluster).stdout
        assert "running" in listing and "of" in listing  # input read of its total
        assert cli("jobs", "cancel", "word_job", cluster=cluster).returncode != 0  # not deployed
        done = cli("jobs", "cancel", "slow_job", cluster=cluster, role="deployer")
        assert done.returncode == 0 and "cancelled slow_job" in done.stdout
        assert "no jobs deployed" in cli("jobs", cluster=cluster).stdout
        # Runners stop it: its output stops growing short of the whole.
        eventually(lambda: "slow_job" not in cli("status", cluster=cluster).stdout, "runners stop it")
        stopped = (tmp_path / "out.txt").read_text().count("\n")
        assert stopped < sum(expected.values())
        # Deployed again (what `wallaroo run --nats` does), it resumes and finishes exactly once.
        deploy_job(cluster, tmp_path, JOB_SLOW="0.01", JOB_MODE="running")
        eventually(lambda: "finished" in cli("jobs", cluster=cluster).stdout, "the job finishes")
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert collections.Counter(lines) == collections.Counter(
        f"{w} => {n}" for w, c in expected.items() for n in range(1, c + 1))


def test_an_s3_job_reads_the_objects_there_at_its_start_and_ends(tmp_path: Path, moto: Moto) -> None:
    async def put(objects: dict[str, bytes]) -> None:
        store = S3Store(BUCKET, "", endpoint_url=moto.url, region=REGION)
        try:
            for key, data in objects.items():
                await store.put(key, data)
        finally:
            await store.close()

    asyncio.run(put({"in/1.txt": b"red green\nred\n", "in/2.txt": b"blue red", "other/x.txt": b"no"}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}
    env.update(S3_JOB_BUCKET=BUCKET, S3_JOB_ENDPOINT=moto.url, JOB_OUTPUT=str(tmp_path / "out.txt"))
    res = subprocess.run([sys.executable, "-m", "wallaroo", "run", str(HERE / "apps" / "s3_job.py")],
                         cwd=tmp_path, env=env, text=True, capture_output=True,
                         stdin=subprocess.DEVNULL, timeout=240)
    assert res.returncode == 0, res.stderr
    assert sorted((tmp_path / "out.txt").read_text().splitlines()) == ["blue 1", "green 1", "red 3"]


def test_a_glob_of_files_is_one_bounded_input(tmp_path: Path) -> None:
    expected: collections.Counter[str] = collections.Counter()
    for i in range(3):
        expected += words_file(tmp_path / f"words-{i}.txt", 200 + i)
    (tmp_path / "other.txt").write_text("not matched\n")
    res = run_job(tmp_path, input_file=tmp_path / "words-*.txt")
    assert res.returncode == 0, res.stderr
    totals = dict(line.split() for line in (tmp_path / "out.txt").read_text().splitlines())
    assert {w: int(n) for w, n in totals.items()} == dict(expected)
    size = sum((tmp_path / f"words-{i}.txt").stat().st_size for i in range(3))
    assert f"{size:,} byte(s) of input in all" in res.stderr
    nothing = run_job(tmp_path, "--fresh", input_file=tmp_path / "nomatch-*.txt")
    assert nothing.returncode == 2 and "matches no file" in nothing.stderr
