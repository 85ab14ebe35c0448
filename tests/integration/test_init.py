"""`wallaroo init` as a user runs it: each template made through the real command, then the
made project's own tests run by pytest in that folder (functions and job start a cluster with
`wallaroo run`); the refusals; and the skeletons shipping in the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from wallaroo.local.scaffold import NEXT, Template

ROOT = Path(__file__).resolve().parents[2]
SKELETONS = ROOT / "templates" / "wallaroo_templates"
pytestmark = pytest.mark.timeout(300)


def user_env() -> dict[str, str]:
    """The environment of a user's shell: none of the cluster settings conftest's session
    fixtures put there, and none of this pytest run's own variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("WALLAROO_", "PYTEST_"))}


def wallaroo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wallaroo", *args], cwd=cwd, env=user_env(),
                          text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)


def one_line(text: str) -> str:
    """A usage error's text without the frame and line breaks typer's box adds."""
    return " ".join(text.replace("│", " ").split())


def run_project_tests(folder: Path) -> dict[str, int]:
    """`python -m pytest` in the made project; its JUnit report's counts."""
    report = folder.parent / f"{folder.name}-junit.xml"
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                          f"--junitxml={report}"], cwd=folder, env=user_env(), text=True,
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=280)
    assert res.returncode == 0, res.stdout + res.stderr
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None, report.read_text()
    return {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}


@pytest.mark.parametrize("template", [
    "stream",
    pytest.param("functions", marks=pytest.mark.integration),  # its test runs `wallaroo run`
    pytest.param("job", marks=pytest.mark.integration),  # likewise
])
def test_a_made_project_passes_its_own_tests(tmp_path: Path, template: str) -> None:
    res = wallaroo("init", "my_app", "--template", template, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    project = tmp_path / "my_app"
    assert "cd my_app" in res.stdout and "python -m pytest" in res.stdout
    for name in ("app.py", "test_app.py", "README.md", "pyproject.toml", ".gitignore"):
        assert name in res.stdout and (project / name).is_file(), name
    assert '("my_app"' in (project / "app.py").read_text()  # the app is named after it
    assert not [p for p in project.iterdir() if p.suffix == ".tmpl" or "{{" in p.read_text()]

    counts = run_project_tests(project)
    assert counts["tests"] >= 2 and counts["failures"] == counts["errors"] == counts["skipped"] == 0


def test_the_default_template_is_stream_and_an_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "word-count").mkdir()
    res = wallaroo("init", "word-count", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "stream project" in res.stdout
    assert 'build_application("word-count"' in (tmp_path / "word-count" / "app.py").read_text()


def test_a_folder_that_is_not_empty_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    res = wallaroo("init", "taken", "--template", "job", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "error: taken exists and is not an empty folder: pick another name, or remove it first"]
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_an_unknown_template_is_a_usage_error_listing_the_choices(tmp_path: Path) -> None:
    res = wallaroo("init", "my_app", "--template", "batch", cwd=tmp_path)
    assert res.returncode == 2
    assert "'stream', 'functions', 'job'" in one_line(res.stderr)
    assert not (tmp_path / "my_app").exists()


@pytest.mark.parametrize("name", ["9lives", "my app", "../escape", "x" * 65, "_under"])
def test_a_bad_name_is_a_usage_error_saying_the_rule(tmp_path: Path, name: str) -> None:
    res = wallaroo("init", name, cwd=tmp_path)
    assert res.returncode == 2
    assert "a letter, then up to 63 letters, digits, '_' or '-'" in one_line(res.stderr)
    assert list(tmp_path.iterdir()) == []


def test_the_skeletons_are_not_collected_as_this_repository_s_tests() -> None:
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          str(SKELETONS)], cwd=ROOT, text=True, capture_output=True, timeout=120)
    assert res.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, res.stdout + res.stderr


def test_the_wheel_carries_every_skeleton_file_and_init_works_from_it(tmp_path: Path) -> None:
    # pip builds it as for any install (build isolation: setuptools from the package index),
    # from a copy: setuptools writes build/ into the tree it builds
    source = tmp_path / "source"
    for folder in ("toolkit", "runtime", "templates"):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True,
                   timeout=240)
    (wheel,) = (tmp_path / "dist").glob("wallaroo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    expected = {f"wallaroo_templates/{p.relative_to(SKELETONS).as_posix()}"
                for p in SKELETONS.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert expected <= shipped, sorted(expected - shipped)

    # the unpacked wheel ahead of this checkout on the path: init reads the wheel's skeletons
    env = {**user_env(), "PYTHONPATH": str(tmp_path / "site")}
    res = subprocess.run([sys.executable, "-c", "import wallaroo_templates, wallaroo.cli; "
                          "print(wallaroo_templates.__file__); wallaroo.cli.main()",
                          "init", "from_wheel", "-t", "functions"], cwd=tmp_path, env=env,
                         text=True, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(str(tmp_path / "site"))
    assert (tmp_path / "from_wheel" / "app.py").read_text() == (
        (SKELETONS / "functions" / "app.py.tmpl").read_text().replace("{{name}}", "from_wheel"))


def test_every_skeleton_folder_is_a_template_choice_and_back() -> None:
    folders = {p.name for p in SKELETONS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {t.value for t in Template} == set(NEXT)
