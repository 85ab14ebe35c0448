"""Jobs: an app whose sources are all bounded runs to its end under `wallaroo run` (real
nats-server and runner processes), flushes its windows at end of input, reports dead letters
through its exit code, and a rerun resumes instead of starting over."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "0 record(s) processed in this run" in again.stderr
    assert (tmp_path / "out.txt").read_text() == before
    # --fresh starts over, but never on top of an earlier run's output.
    refused = run_job(tmp_path, "--fresh")
    assert refused.returncode == 2 and "delete" in refused.stderr and "out.txt.commit" in refused.stderr
    (tmp_path / "out.txt").unlink()
    (tmp_path / "out.txt.commit").unlink()
    fresh = run_job(tmp_path, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "out.txt").read_text().count("\n") == len(expected)


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
