"""The alerts_stateless example: one alert per transaction beyond +-1000, in input order."""

import importlib.util
import sys
from pathlib import Path

import pytest

import wallaroo.testing

HERE = Path(__file__).parent
APP_FILE = HERE / "alerts_stateless.py"
GENERATOR = HERE / "gen_transactions.py"
INPUT = HERE / "transactions.txt"
EXPECTED = HERE / "alerts_expected.txt"


def load(path, register=False):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_app():
    return load(APP_FILE, register=True).application_setup([])


def records():
    return [line for line in INPUT.read_bytes().splitlines() if line]


def expected_lines():
    return EXPECTED.read_text().splitlines()


def alerts_for(lines):
    """Straightforward restatement of the original's rule: > 1000 deposit, < -1000 withdrawal."""
    out = []
    for line in lines:
        tid, amount = line.split(",")
        if int(amount) > 1000:
            out.append(f"Deposit Alert for {tid}: {amount}")
        elif int(amount) < -1000:
            out.append(f"Withdrawal Alert for {tid}: {amount}")
    return out


def test_input_file_is_the_generators_output():
    assert INPUT.read_text().splitlines() == load(GENERATOR).lines()
    assert INPUT.read_text().splitlines()[:4] == ["0,1", "1,208", "2,565", "3,1072"]


def test_expected_file_follows_the_thresholds():
    lines = INPUT.read_text().splitlines()
    assert expected_lines() == alerts_for(lines)
    # The boundary amounts are in the input and raise no alert (the comparisons are strict).
    assert {"207,1000", "457,-1000"} <= set(lines)
    assert not any(a.startswith(("Deposit Alert for 207:", "Withdrawal Alert for 457:"))
                   for a in expected_lines())


@pytest.mark.parametrize("batch_size", [1, 16])
def test_alerts_in_order(batch_size):
    result = wallaroo.testing.run(load_app(), records(), batch_size=batch_size)
    assert result.dead_letters == []
    assert result.lines("alerts") == expected_lines()


@pytest.mark.integration
def test_on_runner(run_on_runner):
    outputs = run_on_runner(APP_FILE, [("transactions", r) for r in records()])
    assert outputs["alerts"] == expected_lines()
