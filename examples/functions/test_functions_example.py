"""The primes example: its functions as plain Python (no cluster), then `wallaroo run` on it as a
user runs it (a real nats-server and runner, stopped at the end)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wallaroo.core.packaging import load_deployable

HERE = Path(__file__).parent
APP_FILE = HERE / "primes.py"


@pytest.fixture(scope="module")
def primes() -> Any:
    _, module = load_deployable(APP_FILE)
    return module


def brute_force_count(lo: int, hi: int) -> int:
    return sum(1 for n in range(max(lo, 2), hi) if all(n % d for d in range(2, int(n**0.5) + 1)))


def test_count_primes_in_process(primes: Any) -> None:
    assert primes.count_primes(0, 100) == 25
    assert primes.count_primes(0, 2) == 0 and primes.count_primes(2, 3) == 1
    assert primes.count_primes(50, 10) == 0
    for lo, hi in [(0, 1_000), (97, 98), (98, 1_000), (990, 5_000), (10_000, 10_500)]:
        assert primes.count_primes(lo, hi) == brute_force_count(lo, hi), (lo, hi)


def test_the_ranges_of_the_entrypoint_add_up_to_the_published_value(primes: Any) -> None:
    step, n = primes.RANGE, primes.N
    assert sum(primes.count_primes(lo, min(lo + step, n)) for lo in range(0, n, step)) == 148_933
    assert primes.published_count(n) == (148_933, 1)  # outside a call: no simulated failure
    with pytest.raises(KeyError, match="no published value"):
        primes.published_count(12)


def test_sieve_class_in_process(primes: Any) -> None:
    sieve = primes.Sieve.spec.target()  # the plain class behind @app.cls()
    sieve.build()
    assert [n for n in range(30) if sieve.is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert sieve.is_prime(2**31 - 1) and not sieve.is_prime(2**11 - 1)  # 2047 = 23 * 89
    assert sieve.is_prime(1_000_003) and not sieve.is_prime(1_000_001)  # 101 * 9901
    with pytest.raises(ValueError, match="answers for n <"):
        sieve.is_prime(10**13)


def no_process_mentions(text: str) -> bool:
    return subprocess.run(["pgrep", "-f", text], capture_output=True).returncode == 1


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_wallaroo_run_prints_the_counts_then_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WALLAROO_NATS"}
    res = subprocess.run([sys.executable, "-m", "wallaroo", "run", str(APP_FILE)], cwd=tmp_path,
                         env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                         timeout=150)

    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "primes below 2,000,000: 148933 (20 ranges of 100,000 counted on the cluster)",
        "Mersenne primes 2^p - 1 for p <= 31: p = 2, 3, 5, 7, 13, 17, 19, 31",
        "published value: 148933 (fetched in 2 attempts)",
        "match: the count agrees with the published value",
    ]
    url = res.stderr.split("nats-server at ")[1].split(",")[0]
    assert no_process_mentions(url.removeprefix("nats://")), "a runner or nats-server outlived run"
