"""wallaroo_runtime.metrics: what a runner and the autoscaler export, parsed as Prometheus
parses a scrape."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest  # noqa: TID251 - the test reads the registry
from prometheus_client.parser import text_string_to_metric_families  # noqa: TID251

from wallaroo.core.observe import StageLag
from wallaroo.local.natsserver import listening
from wallaroo_runtime.autoscale.policy import Decision, Observation
from wallaroo_runtime.metrics import (
    AutoscalerMetrics,
    FunctionState,
    MetricsServerError,
    PartitionSample,
    RunnerMetrics,
    RunnerView,
    serve,
)

ROOT = Path(__file__).resolve().parents[3]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_commits_are_counted_per_partition_with_their_latency() -> None:
    m = RunnerMetrics("r0", RunnerView)
    part = m.partition("wc", 1, 3)
    part.restored(0.5)
    part.committed(0.03, records_in=10, records_out=7, dead=1)
    part.committed(0.3, records_in=5, records_out=5, dead=0)

    s = parse(generate_latest(m.registry).decode())

    labels = {"app": "wc", "stage": "1", "partition": "3"}
    assert value(s, "wallaroo_commits_total", **labels) == 2
    assert value(s, "wallaroo_records_in_total", **labels) == 15
    assert value(s, "wallaroo_records_out_total", **labels) == 12
    assert value(s, "wallaroo_dead_letters_total", **labels) == 1
    assert value(s, "wallaroo_restores_total", **labels) == 1
    assert value(s, "wallaroo_commit_seconds_bucket", app="wc", stage="1", le="0.05") == 1
    assert value(s, "wallaroo_commit_seconds_bucket", app="wc", stage="1", le="0.35") == 2
    assert value(s, "wallaroo_runner_info", runner="r0") == 1


def test_lag_and_function_calls_are_read_at_each_scrape() -> None:
    """Two executors of one version (a redeploy finishing its calls) make one series."""
    view = RunnerView(
        [PartitionSample("wc", 0, 0, 12, 0.0), PartitionSample("wc", 0, 1, 0, 2.5)],
        [FunctionState("wc", "f", "v1", 3, 1, 0, 2, 1), FunctionState("wc", "f", "v1", 1, 0, 1, 0, 0)])
    m = RunnerMetrics("r0", lambda: view)

    s = parse(generate_latest(m.registry).decode())

    assert value(s, "wallaroo_partition_lag", app="wc", stage="0", partition="0") == 12
    assert value(s, "wallaroo_partition_busy_seconds", app="wc", stage="0", partition="1") == 2.5
    assert value(s, "wallaroo_partitions") == 2
    fn = {"app": "wc", "function": "f", "version": "v1"}
    assert [value(s, "wallaroo_function_calls_total", **fn, outcome=o)
            for o in ("ok", "failed", "cancelled")] == [4, 1, 1]
    assert value(s, "wallaroo_function_retries_total", **fn) == 2
    assert value(s, "wallaroo_function_calls_running", **fn) == 1


def observation(*lags: StageLag) -> Observation:
    return Observation(runners=2, desired=2, lags=lags, input_rate=40.0, runner_rates=(),
                       idle_since=None)


def test_the_autoscaler_exports_what_it_saw_and_decided() -> None:
    m = AutoscalerMetrics()
    m.observed(observation(StageLag("wc", 0, "split", 90, 10), StageLag("wc", -1, "fn:f", 3)),
               Decision(3, 3, "lag 103 needs 3", 1))
    m.observed(observation(StageLag("wc", 0, "split", 0)), Decision(2, 2, "no change from 2", 0))

    s = parse(generate_latest(m.registry).decode())

    assert value(s, "wallaroo_autoscaler_lag", app="wc", stage="split") == 0
    assert ("wallaroo_autoscaler_lag", frozenset({("app", "wc"), ("stage", "fn:f")})) not in s
    assert value(s, "wallaroo_autoscaler_runners") == 2
    assert value(s, "wallaroo_autoscaler_input_rate") == 40
    assert value(s, "wallaroo_autoscaler_desired_runners") == 2
    assert [value(s, "wallaroo_autoscaler_decisions_total", direction=d)
            for d in ("up", "stay")] == [1, 1]
    assert value(s, "wallaroo_autoscaler_decision_info", desired="2",
                 reason="no change from 2") == 1


def test_serve_on_any_free_port_then_on_a_taken_one() -> None:
    m = RunnerMetrics("r9", RunnerView)
    server = serve(m.registry, "127.0.0.1", 0)
    try:
        assert server.address == f"127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10) as reply:
            assert value(parse(reply.read().decode()), "wallaroo_runner_info", runner="r9") == 1
        with pytest.raises(MetricsServerError, match=f"127.0.0.1:{server.port}: .*--metrics-port"):
            serve(m.registry, "127.0.0.1", server.port)
    finally:
        server.close()
    assert not listening(server.port)  # closed: nothing answers there any more


def test_every_series_the_grafana_dashboard_queries_is_exported() -> None:
    """templates/grafana-dashboard.json: valid JSON, and no panel asks for a name no runner or
    autoscaler exports (a renamed metric would leave an empty panel)."""
    view = RunnerView([PartitionSample("wc", 0, 0, 1, 0.0)],
                      [FunctionState("wc", "f", "v1", 1, 0, 0, 0, 0)])
    runner = RunnerMetrics("r0", lambda: view)
    runner.partition("wc", 0, 0).committed(0.1, 1, 1, 1)
    scaler = AutoscalerMetrics()
    scaler.observed(observation(StageLag("wc", 0, "split", 1)), Decision(2, 2, "why", 0))
    exported = {s.name for registry in (runner.registry, scaler.registry)
                for family in registry.collect() for s in family.samples}

    dashboard = json.loads((ROOT / "templates" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    queried = {name for e in exprs for name in re.findall(r"\bwallaroo_\w+", e)}

    assert len(exprs) >= 10 and queried and queried <= exported, queried - exported
