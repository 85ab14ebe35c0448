"""The alerts_stateful example: per user, one alert per transaction that leaves the running
total beyond +-2000. Users are keyed onto partitions, so only each user's own alerts have a
defined order: outputs are compared per user."""

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import wallaroo.testing

HERE = Path(__file__).parent
APP_FILE = HERE / "alerts_stateful.py"
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
    """Straightforward restatement of the original: add to the user's total, then alert if the
    total is > 2000 (deposit) or < -2000 (withdrawal)."""
    totals, out = defaultdict(int), []
    for line in lines:
        user, amount = line.rsplit(",", 1)
        totals[user] += int(amount)
        if totals[user] > 2000:
            out.append(f"Deposit Alert for {user}: {totals[user]}")
        elif totals[user] < -2000:
            out.append(f"Withdrawal Alert for {user}: {totals[user]}")
    return out


def by_user(alerts):
    """{user: that user's alerts in output order}."""
    per_user = defaultdict(list)
    for alert in alerts:
        user = alert.split(" for ", 1)[1].rsplit(": ", 1)[0]
        per_user[user].append(alert)
    return dict(per_user)


def test_input_file_is_the_generators_output():
    lines = INPUT.read_text().splitlines()
    assert lines == load(GENERATOR).lines()
    assert lines[:6] == ["Fido,1", "Rex,208", "Dr. Whiskers,565", "Feathers,1072",
                         "Mountaineer,-771", "Fido,36"]
    # The generator's swings (+-6000 once a total passes +-5000) are in the stream.
    assert {"Fido,6000", "Dr. Whiskers,-6000", "Fido,-6000"} <= set(lines)


def test_expected_file_follows_running_totals():
    assert expected_lines() == alerts_for(INPUT.read_text().splitlines())
    assert len(by_user(expected_lines())) == 5


def test_thresholds_are_strict_and_totals_per_user():
    inputs = ["Rex,2000", "Rex,1", "Fido,-2000", "Fido,-1", "Rex,-4001", "Rex,-1", "Fido,4001"]
    result = wallaroo.testing.run(load_app(), inputs)
    assert by_user(result.lines("alerts")) == {
        "Rex": ["Deposit Alert for Rex: 2001", "Withdrawal Alert for Rex: -2001"],
        "Fido": ["Withdrawal Alert for Fido: -2001"],
    }


@pytest.mark.parametrize("batch_size", [1, 8])
def test_alerts_per_user(batch_size):
    result = wallaroo.testing.run(load_app(), records(), batch_size=batch_size)
    assert result.dead_letters == []
    assert by_user(result.lines("alerts")) == by_user(expected_lines())
    assert sorted(result.lines("alerts")) == sorted(expected_lines())


@pytest.mark.integration
def test_on_runner(run_on_runner):
    outputs = run_on_runner(APP_FILE, [("transactions", r) for r in records()])
    assert by_user(outputs["alerts"]) == by_user(expected_lines())
    assert sorted(outputs["alerts"]) == sorted(expected_lines())
