"""A job writing part files, killed whole (SIGKILL of `wallaroo run`, its runners and its
nats-server together) while it commits a part: between a part's staging in `_staging` and its
rename into place. The moment is made, not raced: the killed runs load
`pause_at_part_commit/sitecustomize.py`, which holds the rename once enough parts exist and
marks it, and the test kills on the mark (a 1 ms poll of `_staging` missed that window six
times in a row on a CI machine). Killed twice, the second time while resuming; run again with
the same command, it resumes: what readers see at the end, the union of the part files'
lines, holds every expected "word => n" line exactly once, no part is partial, and nothing is
left staged."""

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
LINES = 30_000  # 120k words, each output line padded to ~200 bytes: ~30 parts of ~1 MB
PAD = 190
KILLS = 2
PARTS_BETWEEN_KILLS = 3
PAUSE = Path(__file__).parent / "pause_at_part_commit"
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def start(tmp_path: Path, pause: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`wallaroo run` of the job; with `pause`, the environment that stops it in a commit."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}
    env.update(JOB_INPUT=str(tmp_path / "words.txt"), JOB_OUTPUT=str(tmp_path / "out"),
               JOB_PAD=str(PAD), **(pause or {}))
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


def parts(target: Path) -> int:
    """How many parts readers see (they skip names starting with _ or .)."""
    return sum(1 for name in names(target) if not name.startswith(("_", ".")))


def kill_in_a_commit(tmp_path: Path, target: Path, parts_first: int) -> list[str]:
    """Start the job, SIGKILL its whole group while it holds a staged part once `parts_first`
    parts exist (bounded in time), and say what `_staging` holds after the kill."""
    mark = tmp_path / "paused"
    mark.unlink(missing_ok=True)
    pythonpath = os.pathsep.join(filter(None, [str(PAUSE), os.environ.get("PYTHONPATH")]))
    proc = start(tmp_path, {"PYTHONPATH": pythonpath, "WALLAROO_TEST_PAUSE_MARK": str(mark),
                            "WALLAROO_TEST_PAUSE_PARTS": str(parts_first)})
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None, "the job ended before the kill: give it more input"
        assert time.monotonic() < deadline, f"no part staged past {parts_first} parts within 120s"
        time.sleep(0.01)
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
    for _ in range(KILLS):
        parts_before = parts(target)
        staged = kill_in_a_commit(tmp_path, target, parts_before + PARTS_BETWEEN_KILLS)
        assert staged, "the kill left no staged part: it did not land inside a commit"
        assert parts(target) >= parts_before + PARTS_BETWEEN_KILLS
    final = start(tmp_path)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err

    assert names(target / PARTS_STAGING) == [], "a staged leftover survived the rerun"
    written = {p.name: p.read_text() for p in target.iterdir() if p.name[0] not in "_."}
    partial = [n for n, text in written.items() if not text.endswith("\n")]
    assert not partial, f"partial parts: {partial[:3]}"
    got = collections.Counter(line.rstrip(". ") for text in written.values() for line in text.splitlines())
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (f"{sum(missing.values())} missing, e.g. {list(missing)[:3]}; "
                                       f"{sum(extra.values())} extra, e.g. {list(extra)[:3]}")
