"""A job killed whole, as a machine crash would (SIGKILL of `wallaroo run`; its runners and
its nats-server die with it), then run again with the same command: it resumes from the
commits, and its whole output, as a multiset of "word => n" lines, holds every expected line
exactly once. Killed a second time during the resumed run too."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chaos_support import wait_until_none_survive

JOB = Path(__file__).parents[1] / "integration" / "apps" / "word_job.py"
LINES = 40_000  # 200k words: several seconds of work, so the kills land mid-job
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def job_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}
    env.update(JOB_INPUT=str(tmp_path / "words.txt"), JOB_OUTPUT=str(tmp_path / "out.txt"),
               JOB_MODE="running")
    return env


def start(tmp_path: Path) -> subprocess.Popen[str]:
    # Its own process group: one killpg takes the CLI, the runners and nats-server at once.
    return subprocess.Popen([sys.executable, "-m", "wallaroo", "run", str(JOB)], cwd=tmp_path,
                            env=job_env(tmp_path), text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def lines_out(tmp_path: Path) -> int:
    path = tmp_path / "out.txt"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_when(proc: subprocess.Popen[str], tmp_path: Path, at_least: int) -> None:
    """SIGKILL the whole group once `at_least` output lines are written (bounded in time)."""
    deadline = time.monotonic() + 120
    while lines_out(tmp_path) < at_least:
        assert proc.poll() is None, "the job ended before the kill: give it more input"
        assert time.monotonic() < deadline, "no output within 120s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_until_none_survive(tmp_path)


def test_a_job_killed_whole_twice_resumes_with_each_output_exactly_once(tmp_path: Path) -> None:
    vocab = [f"w{i}" for i in range(50)]
    text = [" ".join(vocab[(i * 13 + j * 7) % 50] for j in range(5)) for i in range(LINES)]
    (tmp_path / "words.txt").write_text("\n".join(text) + "\n")
    counts = collections.Counter(w for t in text for w in t.split())
    expected = collections.Counter(f"{w} => {n}" for w, c in counts.items() for n in range(1, c + 1))

    kill_when(start(tmp_path), tmp_path, 5_000)
    first = lines_out(tmp_path)
    kill_when(start(tmp_path), tmp_path, first + 5_000)  # killed again, while resuming
    final = start(tmp_path)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err

    got = collections.Counter((tmp_path / "out.txt").read_text().splitlines())
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (f"{sum(missing.values())} missing, e.g. {list(missing)[:3]}; "
                                       f"{sum(extra.values())} extra, e.g. {list(extra)[:3]}")
    # the count is committed with the state: the killed runs' records are in it, once
    assert f"{LINES:,} record(s) processed in all" in err
