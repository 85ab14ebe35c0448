"""Prometheus metrics of real runner and autoscaler processes, scraped over HTTP and parsed as
Prometheus parses them; `wallaroo status` and `wallaroo top --once` showing where they are."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families  # noqa: TID251 - tests parse

from wallaroo.control import apps, ingest
from wallaroo.core import calls, observe
from wallaroo.core.packaging import load_deployable
from wallaroo.core.wire import Heartbeat
from wallaroo.local.dev import DevCluster
from wallaroo.local.natsserver import NatsServer, free_port
from wallaroo.nats import Nats

APP = Path(__file__).parent / "apps" / "metered.py"
LINES = [f"a b c{i % 3}".encode() for i in range(30)]  # 30 lines, 90 words
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    """Every sample of http://address/metrics: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def eventually(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.05)


def on_nats(url: str, fn: Callable[[Nats], object]) -> object:
    async def body() -> object:
        nats = await Nats.connect(url)
        try:
            return await fn(nats)  # type: ignore[misc]
        finally:
            await nats.close()

    return asyncio.run(body())


def beats(url: str) -> list[Heartbeat]:
    return on_nats(url, observe.runner_heartbeats)  # type: ignore[return-value]


def wallaroo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wallaroo", *args], text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """One runner (metrics on a free loopback port, the default), the app deployed, the lines
    sent and processed."""
    with DevCluster(tmp_path_factory.mktemp("metrics") / "c", runners=1) as c:
        async def body(nats: Nats) -> None:
            manifest = await apps.deploy(nats, APP)
            await ingest.send(nats, manifest, "lines", LINES, "metrics-test")
            await apps.wait_idle(nats, manifest, timeout=60)

        on_nats(c.url, body)
        yield c


@pytest.fixture
def fns(cluster: DevCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("WALLAROO_NATS", cluster.url)
    _, module = load_deployable(APP)
    yield module
    calls.close_portals()


def metrics_address(cluster: DevCluster) -> str:
    found = [b.metrics for b in beats(cluster.url)]
    assert len(found) == 1 and found[0].startswith("127.0.0.1:"), found
    return found[0]


def test_a_runner_counts_records_commits_latency_and_restores(cluster: DevCluster) -> None:
    address = metrics_address(cluster)
    # The inputs are acked just before a commit is counted: wait for the last count.
    eventually(lambda: total(scrape(address), "wallaroo_records_in_total", stage="1") == 90,
               "every word counted in by the count stage")
    m = scrape(address)

    assert total(m, "wallaroo_records_in_total", app="metered", stage="0") == 30  # lines
    assert total(m, "wallaroo_records_out_total", stage="0") == 90  # words, to the count stage
    assert total(m, "wallaroo_records_out_total", stage="1") == 90  # counts, to the sink
    assert total(m, "wallaroo_dead_letters_total") == 0
    for stage in ("0", "1"):
        commits = total(m, "wallaroo_commits_total", stage=stage)
        assert commits >= 1
        # One latency observation per commit, every one within the +Inf bucket.
        assert total(m, "wallaroo_commit_seconds_count", stage=stage) == commits
        assert total(m, "wallaroo_commit_seconds_bucket", stage=stage, le="+Inf") == commits
    # Every partition this runner runs restored once, when it started (stage 1 has 2).
    assert total(m, "wallaroo_restores_total", stage="1") == 2
    assert total(m, "wallaroo_partitions") == 3
    lags = {dict(ls)["partition"]: v for (n, ls), v in m.items()
            if n == "wallaroo_partition_lag" and dict(ls)["stage"] == "1"}
    assert lags == {"0": 0.0, "1": 0.0}  # all processed
    assert total(m, "wallaroo_runner_info", runner="r0") == 1


def test_a_runner_counts_function_calls_by_outcome(cluster: DevCluster, fns: ModuleType) -> None:
    address = metrics_address(cluster)
    assert [fns.double.remote(x) for x in range(3)] == [0, 2, 4]

    eventually(lambda: total(scrape(address), "wallaroo_function_calls_total", function="double",
                             outcome="ok") == 3, "three calls counted")
    m = scrape(address)
    assert total(m, "wallaroo_function_calls_total", function="double", outcome="failed") == 0
    assert total(m, "wallaroo_function_calls_running", function="double") == 0


def test_status_and_top_show_where_each_runner_serves_its_metrics(cluster: DevCluster) -> None:
    address = metrics_address(cluster)
    status = wallaroo("status", "--nats", cluster.url)
    assert status.returncode == 0, status.stderr
    assert f"http://{address}/metrics" in status.stdout

    top = wallaroo("top", "--once", "--interval", "0.3", "--nats", cluster.url)

    assert top.returncode == 0, top.stderr
    rows = [line.split() for line in top.stdout.splitlines()]
    # app version stage name partitions lag lag/s records/s: idle, so no lag and no rate
    counts = next(r for r in rows if r[:1] == ["metered"] and r[3] == "count")
    assert counts[2] == "1" and counts[4] == "2" and counts[5] == "0" and counts[7] == "0"
    runner = next(r for r in rows if r[:1] == ["r0"])
    assert runner[1] == "leader" and runner[2] == "3" and runner[-1] == f"http://{address}/metrics"


def test_a_taken_metrics_port_is_a_one_line_error(nats_server: NatsServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = wallaroo("runner", "--nats", nats_server.url, "--allow-unsigned",
                       "--metrics-port", str(port))

    assert res.returncode == 1
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in res.stderr
    assert "--metrics-port" in res.stderr and "Traceback" not in res.stderr


def test_the_autoscaler_exports_its_observation_and_decision(cluster: DevCluster) -> None:
    port = free_port()
    scaler = subprocess.Popen(
        [sys.executable, "-m", "wallaroo", "autoscaler", "--backend", "static", "--nats",
         cluster.url, "--interval", "0.2", "--max-runners", "3", "--metrics-port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=os.environ.copy())
    try:
        def decided() -> bool:
            try:
                return total(scrape(f"127.0.0.1:{port}"),
                             "wallaroo_autoscaler_decisions_total") >= 2
            except OSError:  # not listening yet
                return False

        eventually(decided, "two decisions exported")
        m = scrape(f"127.0.0.1:{port}")
    finally:
        scaler.terminate()
        scaler.wait(timeout=30)
        assert scaler.stderr is not None
        scaler.stderr.close()

    assert total(m, "wallaroo_autoscaler_runners") == 1
    assert total(m, "wallaroo_autoscaler_desired_runners") == 1  # idle: the minimum
    assert total(m, "wallaroo_autoscaler_lag", app="metered", stage="count") == 0
    assert total(m, "wallaroo_autoscaler_lag", app="metered", stage="fn:double") == 0
    reasons = [dict(ls)["reason"] for (n, ls), _ in m.items() if n == "wallaroo_autoscaler_decision_info"]
    assert len(reasons) == 1 and "per runner" in reasons[0]
