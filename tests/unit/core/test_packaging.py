"""wallaroo.core.packaging: load an app file, ship it as a checked artifact, load it back."""

import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wallaroo import testing
from wallaroo.core.errors import AppLoadError, ArtifactError, VersionMismatchError
from wallaroo.core.packaging import (
    KEY_ENV,
    build_artifact,
    load_app,
    load_artifact,
    python_minor,
)
from wallaroo.core.wire import Manifest

STEPS = '''
import wallaroo as wl


class Total:
    def __init__(self):
        self.count = 0


@wl.computation_multi(name="split")
def split(line):
    return line.split()


@wl.key_extractor
def word(w):
    return w


@wl.state_computation(name="count", state=Total)
def count(w, total):
    total.count += 1
    return f"{w} => {total.count}"


def pipeline():
    return (wl.source("lines", wl.StreamSource()).to(split).key_by(word).to(count)
            .to_sink(wl.StreamSink("counts")))
'''

WITH_SETUP = STEPS + '''

def application_setup(args):
    return wl.build_application(args[0] if args else "word count", pipeline())
'''

MODULE_LEVEL = STEPS + '''

app = wl.build_application("word count", pipeline())
'''

WriteApp = Callable[[str], Path]


@pytest.fixture
def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteApp]:
    """Writes an app file; the modules load_app imports are forgotten after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv(KEY_ENV, raising=False)
    names: list[str] = []

    def write(source: str) -> Path:
        names.append(f"wl_test_app_{len(names)}")
        path = tmp_path / f"{names[-1]}.py"
        path.write_text(source)
        return path

    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_load_app_calls_application_setup_with_the_args(write_app: WriteApp) -> None:
    app, module = load_app(write_app(WITH_SETUP), ["word count v2"])

    assert app.name == "word count v2"
    assert module.__name__ == "wl_test_app_0"
    assert sorted(testing.run(app, ["a b a"]).lines()) == ["a => 1", "a => 2", "b => 1"]


def test_load_app_finds_a_module_level_app(write_app: WriteApp) -> None:
    app, module = load_app(write_app(MODULE_LEVEL))

    assert app is module.app
    assert app.name == "word count"


def test_a_file_without_an_app_is_refused(write_app: WriteApp) -> None:
    with pytest.raises(AppLoadError, match="found none app objects"):
        load_app(write_app("import wallaroo\n"))


def test_application_setup_must_return_an_application(write_app: WriteApp) -> None:
    with pytest.raises(AppLoadError, match="returned dict"):
        load_app(write_app("def application_setup(args):\n    return {}\n"))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AppLoadError, match="does not exist"):
        load_app(tmp_path / "nope.py")


def test_a_syntax_error_names_the_file_and_line(write_app: WriteApp) -> None:
    path = write_app("import wallaroo\n\ndef broken(:\n    pass\n")

    with pytest.raises(AppLoadError) as err:
        load_app(path)

    assert f"at {path}:3: SyntaxError" in str(err.value)
    assert "packaging.py" not in str(err.value)


def test_a_runtime_error_names_the_file_and_line(write_app: WriteApp) -> None:
    path = write_app("import wallaroo\n\n\nraise RuntimeError('no config')\n")

    with pytest.raises(AppLoadError) as err:
        load_app(path)

    assert f"at {path}:4: RuntimeError: no config" in str(err.value)


def test_an_error_in_application_setup_names_its_line(write_app: WriteApp) -> None:
    path = write_app("def application_setup(args):\n    return 1 / 0\n")

    with pytest.raises(AppLoadError, match=rf"{path.name}:2: ZeroDivisionError"):
        load_app(path)


def test_artifact_round_trip(write_app: WriteApp) -> None:
    path = write_app(WITH_SETUP)
    app, _ = load_app(path)

    artifact, manifest = build_artifact(app, path)
    loaded = load_artifact(artifact, manifest)

    assert (manifest.name, manifest.slug, manifest.python) == (
        "word count", "word_count", python_minor())
    assert manifest.by_value_modules == ["wl_test_app_0"]
    assert manifest.sinks == ["counts"]
    assert [s.target for s in manifest.stages] == [1, None]
    assert manifest.signature == ""
    assert Manifest.from_wire(manifest.to_wire()) == manifest
    assert sorted(testing.run(loaded.built(), ["x y x"]).lines()) == ["x => 1", "x => 2", "y => 1"]


def test_an_artifact_from_another_python_is_refused_by_name(write_app: WriteApp) -> None:
    path = write_app(WITH_SETUP)
    artifact, manifest = build_artifact(load_app(path)[0], path)
    other = dataclasses.replace(manifest, python="3.99")

    with pytest.raises(VersionMismatchError) as err:
        load_artifact(artifact, other)

    assert "Python 3.99" in str(err.value)
    assert f"Python {python_minor()}" in str(err.value)
    assert (err.value.built_with, err.value.running) == ("3.99", python_minor())


def test_a_tampered_artifact_is_refused(write_app: WriteApp) -> None:
    path = write_app(WITH_SETUP)
    artifact, manifest = build_artifact(load_app(path)[0], path)
    tampered = artifact[:-1] + bytes([artifact[-1] ^ 1])

    with pytest.raises(ArtifactError, match="content hash"):
        load_artifact(tampered, manifest)


def test_with_a_deploy_key_only_artifacts_signed_with_it_load(
    write_app: WriteApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_app(WITH_SETUP)
    app, _ = load_app(path)
    unsigned = build_artifact(app, path)
    monkeypatch.setenv(KEY_ENV, "key-a")
    signed = build_artifact(app, path)

    assert signed[1].signature != ""
    assert load_artifact(*signed).name == app.name
    with pytest.raises(ArtifactError, match="not signed"):
        load_artifact(*unsigned)
    monkeypatch.setenv(KEY_ENV, "key-b")
    with pytest.raises(ArtifactError, match="not signed with this runner's"):
        load_artifact(*signed)
