"""The project's own promises: lint and types clean, CI runs the README's test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [line for line in text.splitlines() if line.startswith("python3 -m venv")]


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    run_app, run_tests = readme_commands()
    assert "wallaroo dev" in run_app and "--input" in run_app
    assert "pytest" in run_tests
    assert run_tests in (ROOT / ".ci" / "run").read_text()


@pytest.mark.timeout(120)
def test_ruff_is_clean() -> None:
    res = subprocess.run([BIN / "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_is_clean() -> None:
    res = subprocess.run([BIN / "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
