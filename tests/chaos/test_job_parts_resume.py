"""A job writing part files, killed whole (SIGKILL of `wallaroo run`, its runners and its
nats-server together) while it commits a part: the moment a staged file shows up in
`_staging`, before its rename (killed again until one kill leaves a staged file behind,
proof that it landed between the two steps). Run again with the same command, it resumes; what readers see
at the end, the union of the part files' lines, holds every expected "word => n" line exactly
once, no part is partial, and nothing is left staged."""

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

from wallaroo_runtime.connectors.framing import PARTS_STAGING

JOB = Path(__file__).parents[1] / "integration" / "apps" / "parts_job.py"
LINES = 60_000  # 240k words, each output line padded to ~200 bytes: ~60 parts of ~1 MB
PAD = 190
MAX_KILLS = 6
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def start(tmp_path: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}
    env.update(JOB_INPUT=str(tmp_path / "words.txt"), JOB_OUTPUT=str(tmp_path / "out"),
               JOB_PAD=str(PAD))
    # Its own process group, killed whole; its runners and nats-server die with it.
    return subprocess.Popen([sys.executable, "-m", "wallaroo", "run", str(JOB)], cwd=tmp_path,
                            env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def kill_in_a_commit(proc: subprocess.Popen[str], target: Path, parts_first: int) -> list[str]:
    """SIGKILL the whole group once `parts_first` parts exist and a part is being staged
    (bounded in time); what `_staging` holds after the kill."""
    deadline = time.monotonic() + 120
    while not (names(target / PARTS_STAGING) and len(names(target)) > parts_first):
        assert proc.poll() is None, "the job ended before the kill: give it more input"
        assert time.monotonic() < deadline, "no part staged within 120s"
        time.sleep(0.001)  # the window between stage and rename is short: look often
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_until_none_survive(target.parent)
    return names(target / PARTS_STAGING)


def expected_lines(path: Path) -> collections.Counter[str]:
    vocab = [f"w{i}" for i in range(50)]
    text = [" ".join(vocab[(i * 13 + j * 7) % 50] for j in range(4)) for i in range(LINES)]
    path.write_text("\n".join(text) + "\n")
    counts = collections.Counter(w for t in text for w in t.split())
    return collections.Counter(f"{w} => {n}" for w, c in counts.items() for n in range(1, c + 1))


def test_a_job_killed_while_committing_parts_resumes_with_each_line_once(tmp_path: Path) -> None:
    expected = expected_lines(tmp_path / "words.txt")
    target = tmp_path / "out"
    # Killed at least twice (once while resuming), and until a kill caught a part between
    # its staging and its rename: the window is short, so one kill may miss it.
    kills: list[list[str]] = []
    while len(kills) < 2 or not any(kills):
        assert len(kills) < MAX_KILLS, f"no kill of {MAX_KILLS} landed inside a part's commit"
        kills.append(kill_in_a_commit(start(tmp_path), target, len(names(target)) + 3))
    final = start(tmp_path)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err

    assert names(target / PARTS_STAGING) == [], "a staged leftover survived the rerun"
    parts = {p.name: p.read_text() for p in target.iterdir() if p.name[0] not in "_."}
    partial = [n for n, text in parts.items() if not text.endswith("\n")]
    assert not partial, f"partial parts: {partial[:3]}"
    got = collections.Counter(line.rstrip(". ") for text in parts.values() for line in text.splitlines())
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (f"{sum(missing.values())} missing, e.g. {list(missing)[:3]}; "
                                       f"{sum(extra.values())} extra, e.g. {list(extra)[:3]}")
