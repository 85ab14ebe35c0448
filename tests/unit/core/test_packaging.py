"""wallaroo.core.packaging: load an app file, ship it as a checked artifact, load it back."""

import dataclasses
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wallaroo import testing
from wallaroo.core.errors import AppLoadError, ArtifactError, SignatureError, VersionMismatchError
from wallaroo.core.keys import DEPLOY_KEY_ENV, SigningKey, Trust, generate_pair, load_signing_key
from wallaroo.core.packaging import (
    build_artifact,
    load_app,
    load_artifact,
    python_minor,
    sign,
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
    monkeypatch.delenv(DEPLOY_KEY_ENV, raising=False)
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


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return load_signing_key(generate_pair(tmp_path / "keys")[0])


@pytest.fixture
def trust(key: SigningKey) -> Trust:
    return Trust({key.fingerprint: key.public})


def test_artifact_round_trip(write_app: WriteApp, key: SigningKey, trust: Trust) -> None:
    path = write_app(WITH_SETUP)
    app, _ = load_app(path)

    artifact, manifest = build_artifact(app, path, key)
    loaded = load_artifact(artifact, manifest, trust)

    assert (manifest.name, manifest.slug, manifest.python) == (
        "word count", "word_count", python_minor())
    assert manifest.by_value_modules == ["wl_test_app_0"]
    assert manifest.sinks == ["counts"]
    assert [s.target for s in manifest.stages] == [1, None]
    assert manifest.signature.startswith(key.fingerprint + ":")
    assert Manifest.from_wire(manifest.to_wire()) == manifest
    assert sorted(testing.run(loaded.built(), ["x y x"]).lines()) == ["x => 1", "x => 2", "y => 1"]


def test_shipped_code_keeps_its_file_name_and_lines(write_app: WriteApp, key: SigningKey,
                                                   trust: Trust) -> None:
    """cloudpickle names shipped code "<dynamic-code>"; a dead letter's traceback must name
    the user's file and line instead (and where the file is, show the line)."""
    path = write_app(WITH_SETUP)
    artifact, manifest = build_artifact(load_app(path)[0], path, key)
    split = load_artifact(artifact, manifest, trust).built().stages[0].steps[0].fn

    with pytest.raises(AttributeError) as err:
        split(None)

    frame = traceback.extract_tb(err.value.__traceback__)[-1]
    line = STEPS.splitlines().index("    return line.split()") + 1
    assert (frame.filename, frame.lineno, frame.line) == (str(path.resolve()), line,
                                                          "return line.split()")
    assert b"<dynamic-code>" not in artifact


def test_an_artifact_from_another_python_is_refused_by_name(
        write_app: WriteApp, key: SigningKey, trust: Trust) -> None:
    path = write_app(WITH_SETUP)
    artifact, manifest = build_artifact(load_app(path)[0], path)
    other = sign(artifact, dataclasses.replace(manifest, python="3.99"), key)

    with pytest.raises(VersionMismatchError) as err:
        load_artifact(artifact, other, trust)

    assert "Python 3.99" in str(err.value)
    assert f"Python {python_minor()}" in str(err.value)
    assert (err.value.built_with, err.value.running) == ("3.99", python_minor())


def test_a_tampered_artifact_is_refused(write_app: WriteApp, key: SigningKey, trust: Trust) -> None:
    path = write_app(WITH_SETUP)
    artifact, manifest = build_artifact(load_app(path)[0], path, key)
    tampered = artifact[:-1] + bytes([artifact[-1] ^ 1])

    with pytest.raises(SignatureError, match="does not verify"):
        load_artifact(tampered, manifest, trust)
    # Without signatures, the content hash still catches it.
    with pytest.raises(ArtifactError, match="content hash"):
        load_artifact(tampered, manifest, Trust.anyone())


def test_a_manifest_changed_after_signing_is_refused(
        write_app: WriteApp, key: SigningKey, trust: Trust) -> None:
    path = write_app(WITH_SETUP)
    artifact, manifest = build_artifact(load_app(path)[0], path, key)

    with pytest.raises(SignatureError, match=f"signature by {key.fingerprint} that does not verify"):
        load_artifact(artifact, dataclasses.replace(manifest, partitions=1), trust)


def test_an_unsigned_artifact_is_refused_naming_the_trusted_keys(
        write_app: WriteApp, trust: Trust) -> None:
    path = write_app(WITH_SETUP)
    unsigned = build_artifact(load_app(path)[0], path)

    with pytest.raises(SignatureError) as err:
        load_artifact(*unsigned, trust)

    assert unsigned[1].signature == ""
    assert "is unsigned" in str(err.value) and trust.expected in str(err.value)
    assert (err.value.expected, err.value.found) == (trust.expected, None)


def test_an_artifact_signed_with_another_key_is_refused_naming_both(
        write_app: WriteApp, tmp_path: Path, trust: Trust) -> None:
    path = write_app(WITH_SETUP)
    foreign = load_signing_key(generate_pair(tmp_path / "other")[0])
    signed = build_artifact(load_app(path)[0], path, foreign)

    with pytest.raises(SignatureError) as err:
        load_artifact(*signed, trust)

    assert f"is signed with key {foreign.fingerprint}, but this runner trusts {trust.expected}" in str(
        err.value)
    assert err.value.found == foreign.fingerprint != trust.expected


def test_any_of_several_trusted_keys_may_sign(
        write_app: WriteApp, tmp_path: Path, key: SigningKey, trust: Trust) -> None:
    path = write_app(WITH_SETUP)
    new = load_signing_key(generate_pair(tmp_path / "new")[0])
    both = Trust({**trust.keys, new.fingerprint: new.public})

    assert load_artifact(*build_artifact(load_app(path)[0], path, new), both).name == "word count"
    assert load_artifact(*build_artifact(load_app(path)[0], path, key), both).name == "word count"


def test_an_old_hmac_signature_is_refused_with_how_to_fix(
        write_app: WriteApp, trust: Trust) -> None:
    path = write_app(WITH_SETUP)
    artifact, manifest = build_artifact(load_app(path)[0], path)
    old = dataclasses.replace(manifest, signature="ab" * 32)  # what an HMAC-SHA256 hexdigest looks like

    with pytest.raises(SignatureError, match="old-style HMAC"):
        load_artifact(artifact, old, trust)


def test_a_runner_trusting_no_key_refuses_everything_unless_it_allows_unsigned(
        write_app: WriteApp, key: SigningKey) -> None:
    path = write_app(WITH_SETUP)
    signed = build_artifact(load_app(path)[0], path, key)
    unsigned = build_artifact(load_app(path)[0], path)

    with pytest.raises(SignatureError, match="trusts no deploy key"):
        load_artifact(*signed, Trust())
    assert load_artifact(*unsigned, Trust.anyone()).name == "word count"
