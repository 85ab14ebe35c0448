"""The celsius example: every record converts to Fahrenheit, in order, formatted "%.6f"."""

import importlib.util
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import wallaroo.testing

HERE = Path(__file__).parent
APP_FILE = HERE / "celsius.py"
INPUT = HERE / "celsius.txt"
EXPECTED = HERE / "fahrenheit_expected.txt"


def load_app():
    spec = importlib.util.spec_from_file_location(APP_FILE.stem, APP_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.application_setup([])


def records():
    return [line for line in INPUT.read_bytes().splitlines() if line]


def expected_lines():
    return EXPECTED.read_text().splitlines()


def test_expected_file_is_exact_decimal_conversion():
    exact = [f"{Decimal(r.decode()) * Decimal('1.8') + 32:.6f}" for r in records()]
    assert expected_lines() == exact
    assert expected_lines()[:3] == ["32.000000", "212.000000", "-40.000000"]


@pytest.mark.parametrize("batch_size", [1, 7])
def test_converts_every_record_in_order(batch_size):
    result = wallaroo.testing.run(load_app(), records(), batch_size=batch_size)
    assert result.dead_letters == []
    assert result.lines("fahrenheit") == expected_lines()


@pytest.mark.integration
def test_on_runner(run_on_runner):
    outputs = run_on_runner(APP_FILE, [("celsius", r) for r in records()])
    assert outputs["fahrenheit"] == expected_lines()
