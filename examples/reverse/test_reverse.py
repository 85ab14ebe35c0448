"""The reverse example: every string comes out reversed, in order."""

import importlib.util
import sys
from pathlib import Path

import pytest

import wallaroo.testing

HERE = Path(__file__).parent
APP_FILE = HERE / "reverse.py"
INPUT = HERE / "words.txt"
EXPECTED = HERE / "reversed_expected.txt"


def load_app():
    spec = importlib.util.spec_from_file_location(APP_FILE.stem, APP_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.application_setup([])


def records():
    return [line for line in INPUT.read_bytes().splitlines() if line]


def expected_lines():
    return EXPECTED.read_text(encoding="utf-8").splitlines()


def reversed_text(text):
    chars = []
    for i in range(len(text) - 1, -1, -1):
        chars.append(text[i])
    return "".join(chars)


def test_expected_file_reverses_the_input():
    words = [r.decode("utf-8") for r in records()]
    assert expected_lines() == [reversed_text(w) for w in words]
    assert "dlrow olleh" in expected_lines()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_reverses_every_record_in_order(batch_size):
    result = wallaroo.testing.run(load_app(), records(), batch_size=batch_size)
    assert result.dead_letters == []
    assert result.lines("reversed") == expected_lines()


@pytest.mark.integration
def test_on_runner(run_on_runner):
    outputs = run_on_runner(APP_FILE, [("words", r) for r in records()])
    assert outputs["reversed"] == expected_lines()
