"""The log job: in-process with wallaroo.testing (end of input flushes the last windows), and
end to end through `wallaroo run` on generated logs; both against a plain Python count."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import wallaroo.testing
from wallaroo.core.packaging import load_app

HERE = Path(__file__).parent
SERVICES = ["checkout", "search", "auth", "images"]


def generate(folder: Path, lines: int) -> None:
    subprocess.run([sys.executable, str(HERE / "generate.py"), "--lines", str(lines),
                    "--out", str(folder / "logs")], check=True, capture_output=True)


def expected(folder: Path) -> collections.Counter[str]:
    """errors and lines per (service, hour), counted the plain way."""
    counts: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    for service in SERVICES:
        for line in (folder / "logs" / f"{service}.log").read_text().splitlines():
            at, svc, level, _ = line.split(" ", 3)
            hour = datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            c = counts[(svc, hour.strftime("%Y-%m-%dT%H:00Z"))]
            c[0] += level == "ERROR"
            c[1] += 1
    return collections.Counter(f"{s} {h} {e} errors of {n} lines" for (s, h), (e, n) in counts.items())


def test_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate(tmp_path, 300)
    monkeypatch.setenv("LOG_JOB_DIR", str(tmp_path))
    app, _ = load_app(HERE / "log_job.py")
    inputs = [(s, line) for s in SERVICES
              for line in (tmp_path / "logs" / f"{s}.log").read_bytes().splitlines()]
    result = wallaroo.testing.run(app, inputs, batch_size=50, end_of_input=True)
    assert collections.Counter(result.lines()) == expected(tmp_path)
    assert len(result.lines()) == 4 * 24


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_wallaroo_run(tmp_path: Path) -> None:
    generate(tmp_path, 3000)
    env = {k: v for k, v in os.environ.items()
           if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}
    env["LOG_JOB_DIR"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-m", "wallaroo", "run", str(HERE / "log_job.py")],
                         cwd=tmp_path, env=env, text=True, capture_output=True,
                         stdin=subprocess.DEVNULL, timeout=240)
    assert res.returncode == 0, res.stderr
    parts = sorted((tmp_path / "errors_per_hour").glob("part-*"))
    got = collections.Counter(line for part in parts for line in part.read_text().splitlines())
    assert got == expected(tmp_path)
    assert not list((tmp_path / "errors_per_hour" / "_staging").glob("*"))
