"""Prometheus metrics of a runner and of the autoscaler, served on `/metrics`.

The one module that imports prometheus_client (ruff's banned-api holds the line). Each process
gets its own CollectorRegistry, never the library's global one: several runners in one test
process must not share (or collide on) their series.

- Commits are counted as they happen, through the worker's CommitObserver hook: once per
  commit with label children bound when the worker starts, never per record.
- What is a state rather than an event (a partition's lag, calls running, function outcomes
  the executors already count) is read when Prometheus scrapes, from a view the runner gives.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import (  # noqa: TID251 - this module owns the prometheus_client import
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.core import (  # noqa: TID251 - this module owns the prometheus_client import
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector  # noqa: TID251 - the owner, as above

from wallaroo.core.errors import WallarooError
from wallaroo_runtime.autoscale.policy import Decision, Observation

# Commit latency: a commit runs user code, appends to the changelog, publishes and acks; the
# worker aims at 0.2 s (WorkerConfig.target_commit_seconds), so the buckets centre there.
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PART_LABELS = ("app", "stage", "partition")


class MetricsServerError(WallarooError, OSError):
    """The metrics port could not be opened (taken, or not an address of this machine)."""

    def __init__(self, host: str, port: int, err: OSError) -> None:
        self.host, self.port = host, port
        super().__init__(f"cannot serve metrics on {host}:{port}: {err.strerror or err}; "
                         "pick another --metrics-port (0: any free port) or --metrics-host")


@dataclass
class MetricsServer:
    """A `/metrics` HTTP server on a thread of its own; `address` is host:port as others
    reach it (the port the system chose when asked for port 0)."""

    httpd: WSGIServer
    thread: threading.Thread
    address: str

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve `registry` on http://host:port/metrics (port 0: any free port)."""
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        raise MetricsServerError(host, port, err) from None
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:  # an IPv6 address: bracketed, as in a URL
        shown = f"[{shown}]"
    return MetricsServer(httpd, thread, f"{shown}:{httpd.server_port}")


# --- the runner --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionSample:
    app: str
    stage: int
    partition: int
    lag: int  # input messages not yet delivered, as of the worker's last fetch
    busy_seconds: float  # how long the batch in hand has run user code


@dataclass(frozen=True)
class FunctionState:
    app: str
    function: str
    version: str
    done: int
    failed: int
    cancelled: int
    retried: int
    running: int


@dataclass(frozen=True)
class RunnerView:
    """What the runner runs now, read at each scrape."""

    partitions: list[PartitionSample] = field(default_factory=list)
    functions: list[FunctionState] = field(default_factory=list)


class PartitionMetrics:
    """The CommitObserver of one partition worker: its label children, bound once."""

    __slots__ = ("_commits", "_dead", "_in", "_latency", "_out", "_restores")

    def __init__(self, m: RunnerMetrics, app: str, stage: int, partition: int) -> None:
        labels = (app, str(stage), str(partition))
        self._commits = m.commits.labels(*labels)
        self._in = m.records_in.labels(*labels)
        self._out = m.records_out.labels(*labels)
        self._dead = m.dead_letters.labels(*labels)
        self._restores = m.restores.labels(*labels)
        self._latency = m.commit_seconds.labels(app, str(stage))

    def committed(self, seconds: float, records_in: int, records_out: int, dead: int) -> None:
        self._commits.inc()
        self._in.inc(records_in)
        self._out.inc(records_out)
        if dead:
            self._dead.inc(dead)
        self._latency.observe(seconds)

    def restored(self, seconds: float) -> None:
        self._restores.inc()


class RunnerMetrics:
    """Every series a runner exports, in a registry of its own. `view` is called at each
    scrape, on the HTTP server's thread: it must only read."""

    def __init__(self, runner_id: str, view: Callable[[], RunnerView]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commits = Counter("wallaroo_commits", "Commits (one per input batch committed)",
                               PART_LABELS, registry=r)
        self.records_in = Counter("wallaroo_records_in", "Input records committed",
                                  PART_LABELS, registry=r)
        self.records_out = Counter("wallaroo_records_out", "Records handed to the next stage "
                                   "or to sinks", PART_LABELS, registry=r)
        self.dead_letters = Counter("wallaroo_dead_letters", "Records and malformed messages "
                                    "dead-lettered", PART_LABELS, registry=r)
        self.restores = Counter("wallaroo_restores", "Partition state restores (snapshot + "
                                "changelog replay)", PART_LABELS, registry=r)
        self.commit_seconds = Histogram("wallaroo_commit_seconds", "From running a batch to "
                                        "its inputs acked", ("app", "stage"),
                                        buckets=COMMIT_BUCKETS, registry=r)
        Info("wallaroo_runner", "This runner", registry=r).info({"runner": runner_id})
        r.register(_RunnerStateCollector(view))

    def partition(self, app: str, stage: int, partition: int) -> PartitionMetrics:
        return PartitionMetrics(self, app, stage, partition)


class _RunnerStateCollector(Collector):
    def __init__(self, view: Callable[[], RunnerView]) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        now = self.view()
        return [*_partition_families(now.partitions), *_function_families(now.functions)]


def _partition_families(parts: list[PartitionSample]) -> list[Metric]:
    lag = GaugeMetricFamily("wallaroo_partition_lag", "Input messages of the partition not "
                            "yet delivered (as of its last fetch)", labels=PART_LABELS)
    busy = GaugeMetricFamily("wallaroo_partition_busy_seconds", "How long the batch in hand "
                             "has run user code", labels=PART_LABELS)
    for p in parts:
        labels = [p.app, str(p.stage), str(p.partition)]
        lag.add_metric(labels, p.lag)
        busy.add_metric(labels, p.busy_seconds)
    owned = GaugeMetricFamily("wallaroo_partitions", "Partitions this runner runs now",
                              value=len(parts))
    return [lag, busy, owned]


def _function_families(functions: list[FunctionState]) -> list[Metric]:
    labels = ["app", "function", "version"]
    calls = CounterMetricFamily("wallaroo_function_calls", "Function calls finished here, by "
                                "outcome", labels=[*labels, "outcome"])
    retries = CounterMetricFamily("wallaroo_function_retries", "Attempts retried after the "
                                  "user's code failed", labels=labels)
    running = GaugeMetricFamily("wallaroo_function_calls_running", "Calls running here now",
                                labels=labels)
    for f in _summed(functions):
        key = [f.app, f.function, f.version]
        for outcome, n in (("ok", f.done), ("failed", f.failed), ("cancelled", f.cancelled)):
            calls.add_metric([*key, outcome], n)
        retries.add_metric(key, f.retried)
        running.add_metric(key, f.running)
    return [calls, retries, running]


def _summed(functions: list[FunctionState]) -> list[FunctionState]:
    """One row per (app, function, version): a version redeployed while its old executors
    finish calls would otherwise show one series twice, which Prometheus rejects."""
    rows: dict[tuple[str, str, str], FunctionState] = {}
    for f in functions:
        key = (f.app, f.function, f.version)
        was = rows.get(key)
        rows[key] = f if was is None else FunctionState(
            f.app, f.function, f.version, was.done + f.done, was.failed + f.failed,
            was.cancelled + f.cancelled, was.retried + f.retried, was.running + f.running)
    return list(rows.values())


# --- the autoscaler ----------------------------------------------------------------------------


class AutoscalerMetrics:
    """The autoscaler's observation (lag per stage, runners, input rate) and decision
    (desired and recommended runners, why, how often it moved) at each tick."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lag = Gauge("wallaroo_autoscaler_lag", "Lag (pending + ack pending messages) per "
                         "stage, as observed", ("app", "stage"), registry=r)
        self.runners = Gauge("wallaroo_autoscaler_runners", "Live runners, as observed",
                             registry=r)
        self.input_rate = Gauge("wallaroo_autoscaler_input_rate", "Messages/s arriving, as "
                                "observed", registry=r)
        self.desired = Gauge("wallaroo_autoscaler_desired_runners", "Runners decided on "
                             "(after stabilization and bounds)", registry=r)
        self.recommended = Gauge("wallaroo_autoscaler_recommended_runners", "This tick's raw "
                                 "recommendation", registry=r)
        self.decisions = Counter("wallaroo_autoscaler_decisions", "Decisions, by direction",
                                 ("direction",), registry=r)
        self.reason = Info("wallaroo_autoscaler_decision", "The last decision and why",
                           registry=r)
        self._stages: set[tuple[str, str]] = set()

    def observed(self, obs: Observation, decision: Decision) -> None:
        """One tick's observation and decision (the Autoscaler's `on_tick`)."""
        self.runners.set(obs.runners)
        self.input_rate.set(obs.input_rate)
        # stage names, "fn:<function>" for a function's calls
        seen = {(s.app, s.name) for s in obs.lags}
        for gone in self._stages - seen:  # an app removed: its stages stop being reported
            self.lag.remove(*gone)
        self._stages = seen
        for s in obs.lags:
            self.lag.labels(s.app, s.name).set(s.lag)
        self.desired.set(decision.desired)
        self.recommended.set(decision.recommended)
        change = decision.change
        self.decisions.labels("up" if change > 0 else "down" if change < 0 else "stay").inc()
        self.reason.info({"desired": str(decision.desired), "reason": decision.reason})
