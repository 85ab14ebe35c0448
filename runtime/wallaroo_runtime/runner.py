"""The long-lived runner process. Every tick it heartbeats its membership (with its progress),
campaigns for leadership (the leader assigns partitions), loads newly deployed app versions,
and starts or stops partition workers to match the assignment. A tick comes early when the
cluster changed (cluster.ClusterWatch): a new assignment, a member gone."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from wallaroo.core import observe, repartition
from wallaroo.core.aio import sleep_or_stop
from wallaroo.core.calls import CallClient, forbid_blocking_calls
from wallaroo.core.changelog import PartitionState
from wallaroo.core.errors import FencedError, WallarooError
from wallaroo.core.keys import DEPLOY_KEY_ENV, Trust
from wallaroo.core.names import (
    APPS_BUCKET,
    ARTIFACTS_BUCKET,
    LEASES_BUCKET,
    MEMBERS_BUCKET,
    REPLACE_EXIT,
    AppNames,
    partition_key,
)
from wallaroo.core.packaging import load_artifact, verify_artifact
from wallaroo.core.wire import (
    AppReport,
    Assignment,
    FunctionReport,
    Heartbeat,
    Manifest,
    Part,
    PartitionReport,
    Retirement,
    SinkReport,
)
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.functions import App, FunctionSpec
from wallaroo.nats import Nats, unavailable
from wallaroo.nats.protocol import CREDS_ENV
from wallaroo.plan import Application
from wallaroo_runtime import cluster, scheduler
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.cluster import ClusterConfig, ClusterWatch, Leadership, Lease
from wallaroo_runtime.compactor import Compactor
from wallaroo_runtime.connectors import SinkStats, connector_tasks, run_leased
from wallaroo_runtime.executor import ExecutorConfig, FunctionExecutor
from wallaroo_runtime.layouts import LayoutKeeper
from wallaroo_runtime.metrics import FunctionState, PartitionSample, RunnerMetrics, RunnerView, serve
from wallaroo_runtime.process import backoff, run_until_signal
from wallaroo_runtime.statestore import StateStore, open_store

log = logging.getLogger("wallaroo.runner")
GC_THRESHOLDS = (50_000, 20, 20)  # see main()
# Why shorter than CPython's 5 ms: a thread running Python (a snapshot being encoded, a slow
# partition's user code) keeps the GIL from the event loop, which every partition's commits
# share, for up to the switch interval at each wake-up. At a steady 20k records/s word count
# this took the p99 from ~38 to ~33 ms (A/B, medians of 4 runs on a shared 2-core machine).
SWITCH_INTERVAL = 0.0005
M_ARENA_MAX = -8  # glibc's malloc.h
MALLOC_ARENAS = 2  # see limit_malloc_arenas
OPEN_FILES = 65_536  # see raise_open_files_limit
# How many member TTLs a spell of NATS trouble may keep owners in the assignment: longer than
# a stream or meta election (4-9 s; 3 s is the default TTL), shorter than an operator's wait.
TROUBLE_GRACE = 10
# How long status shows a worker's failure that was not followed by a commit: far longer than
# the restart backoff's cap (a crash loop never drops out), short enough that a single failure
# of an idle partition does not hang around.
TROUBLE_SHOWN = 60.0


@dataclass(frozen=True)
class Trouble:
    """A partition whose worker failed: how often, the last error, when (monotonic), and the
    worker that failed (a worker started after it that commits shows the partition recovered)."""

    failures: int
    error: str
    at: float
    worker: PartitionWorker


@dataclass
class AppHost:
    """One deployed version of one app on this runner: a supervised worker per owned
    partition, each running only while it holds the partition's lease."""

    nats: Nats
    manifest: Manifest
    deployed: App
    runner_id: str
    cfg: WorkerConfig
    checkpoint_cfg: CheckpointConfig
    cluster_cfg: ClusterConfig
    executor_cfg: ExecutorConfig
    replace: Callable[[str], None]  # asks the runner to replace its process (see Runner.replace)
    owned: set[Part] = field(default_factory=set)
    workers: dict[Part, PartitionWorker] = field(default_factory=dict)
    tasks: dict[Part, asyncio.Task[None]] = field(default_factory=dict)
    failures: int = 0
    executors: dict[str, FunctionExecutor] = field(default_factory=dict)
    executor_runs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    connector_stop: asyncio.Event = field(default_factory=asyncio.Event)
    connector_runs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    sink_stats: dict[str, SinkStats] = field(default_factory=dict)
    troubles: dict[Part, Trouble] = field(default_factory=dict)
    metrics: RunnerMetrics | None = None  # None: this runner exports no metrics
    retirement: Retirement = field(default_factory=Retirement)  # the leader's, last read
    watch: ClusterWatch | None = None  # the runner's: a lease holder heard go silent is gone
    _app: Application | None = None

    @property
    def app(self) -> Application:
        return self.deployed.built()

    @property
    def laid_out(self) -> Application:
        """The deployed app, its stages numbered as the manifest lays them out (what its
        workers run: wallaroo.core.repartition), without the drained layouts the leader retired."""
        if self._app is None:
            layouts = {s.index: (s.base, repartition.live_prev(s, self.retirement))
                       for s in self.manifest.stages}
            self._app = self.deployed.built().laid_out(layouts)
        return self._app

    async def start(self) -> None:
        names = AppNames(self.app.slug)
        for stream, (subjects, work_queue) in names.streams().items():
            await self.nats.ensure_stream(stream, subjects, work_queue=work_queue)

    def start_functions(self) -> None:
        """Serve every function of the app (restarting a failed executor's loop)."""
        if self.connector_stop.is_set():
            return
        for name, spec in self.deployed.specs.items():
            run = self.executor_runs.get(name)
            if run is None or run.done():
                if run is not None and not run.cancelled() and run.exception() is not None:
                    self.failures += 1
                    log.error("functions of %s/%s failed: %s", self.app.slug, name, run.exception())
                ex = self.executors[name] = FunctionExecutor(self.nats, self.app.slug, spec,
                                                             self.runner_id, self.executor_cfg,
                                                             self.replace)
                self.executor_runs[name] = asyncio.create_task(ex.run())

    def retire(self, record: Retirement) -> None:
        """Adopt the leader's word on retired layouts: from now on this version runs none of
        their partitions, and its workers send no end-of-layout markers to them."""
        if record.retired != self.retirement.retired:
            self.retirement = record
            self._app = None  # laid out again; running workers of retired partitions stop

    def running(self, part: Part) -> bool:
        """Does a worker of this version still run (or wait to run) `part`?"""
        task = self.tasks.get(part)
        return task is not None and not task.done()

    def reconcile(self, assigned: Assignment) -> None:
        """Start workers for partitions assigned here; ask the others to finish and stop."""
        # Only partitions this version lays out: a leader that loaded a newer version with
        # other partition counts assigns its new layout's partitions, which this version's
        # code must not run (their keys' state is not where it would look).
        self.owned = {p for p in assigned.owned_by(self.runner_id) if p in self.runnable}
        for part in self.owned - set(self.tasks):
            self.tasks[part] = asyncio.create_task(self._supervise(part))
        for part in set(self.tasks) - self.owned:
            worker = self.workers.get(part)
            if worker is not None:
                worker.stop()
        for part in [p for p, t in self.tasks.items() if t.done()]:
            del self.tasks[part]

    async def _supervise(self, part: Part) -> None:
        lease = Lease(self.nats, partition_key(self.app.slug, *part), self.runner_id, self.cluster_cfg,
                      self.watch)
        try:
            if not await lease.acquire(lambda: part in self.owned):
                return
            if await self._retired(part):
                await self.nats.kv_purge(LEASES_BUCKET, lease.key)  # as the reclaimer leaves it
                lease.revision = None
                return
            await self._run_worker(part, lease)
        except Exception as err:  # the next reconcile starts a fresh supervisor
            self.failures += 1
            log.error("supervisor of %s/%d/%d failed: %s", self.app.slug, *part, err, exc_info=True)
        finally:
            self.workers.pop(part, None)
            with contextlib.suppress(WallarooError, OSError, TimeoutError):
                await lease.release()

    async def _retired(self, part: Part) -> bool:
        """Was `part` retired since it was assigned here (wallaroo_runtime.layouts)? Asked
        again under its lease: a worker started from a stale assignment would recreate what
        the leader reclaims (its consumer, its lease key) after the reclaim."""
        stage = next((s for s in self.manifest.stages if s.index == part[0]), None)
        if stage is None:
            return False
        return part[1] < repartition.retired(await observe.retirement_of(self.nats, self.manifest), stage)

    async def _run_worker(self, part: Part, lease: Lease) -> None:
        delays = backoff()
        while part in self.owned:
            worker = self._worker(part)
            self.workers[part] = worker
            try:
                await worker.run()
                return
            except FencedError as err:
                log.warning("%s", err)
                if not await lease.held():
                    return
            except Exception as err:  # a worker restarts from its changelog after any failure
                self._worker_failed(part, worker, err)
            await asyncio.sleep(next(delays))

    def _worker_failed(self, part: Part, worker: PartitionWorker, err: Exception) -> None:
        """Count and remember the failure: the heartbeat reports a partition whose worker
        keeps failing, so a crash loop shows in `wallaroo status` instead of only in a log."""
        self.failures += 1
        before = self.troubles.get(part)
        failures = 1 + (before.failures if before else 0)
        self.troubles[part] = Trouble(failures, f"{type(err).__name__}: {err}", time.monotonic(),
                                      worker)
        log.error("worker %s/%d/%d failed (%d failures so far): %s",
                  self.app.slug, *part, failures, err, exc_info=True)

    def _worker(self, part: Part) -> PartitionWorker:
        app = self.laid_out
        stage = app.stages[part[0]]
        names = AppNames(self.app.slug)
        checkpoints = Checkpointer(self.nats, self.checkpoint_cfg, self.app.slug, stage.index,
                                   part[1], names.log_stream, names.log(*part), stage.stateful)
        observer = self.metrics.partition(self.app.slug, *part) if self.metrics else None

        async def restore_part(other: int, last_seq: int) -> PartitionState:
            """Another partition of the stage (of the layout this one replaces), from its
            snapshots and changelog: read only, its own owner trims it."""
            reader = Checkpointer(self.nats, self.checkpoint_cfg, self.app.slug, stage.index,
                                  other, names.log_stream, names.log(stage.index, other),
                                  stage.stateful)
            # read only: it holds none of the records it reads for a segment it never writes
            return await reader.restore(last_seq, read_only=True)

        return PartitionWorker(self.nats, app, self.manifest.version, stage, part[1],
                               self.cfg, checkpoints, observer=observer, restore_part=restore_part)

    def start_connectors(self) -> None:
        """Start (or restart a failed) run per connector source and sink; each runs only on
        the runner holding its lease."""
        if self.connector_stop.is_set():
            return
        tasks = connector_tasks(self.nats, self.manifest.slug, self.app, self.connector_stop,
                                self.sink_stats)
        for key, factory in tasks:
            task = self.connector_runs.get(key)
            if task is None or task.done():
                self.connector_runs[key] = asyncio.create_task(run_leased(
                    self.nats, self.runner_id, self.cluster_cfg, key, factory,
                    self.connector_stop, self.watch))

    def begin_stop(self) -> None:
        """Every worker finishes and commits its batch in hand, then releases its lease;
        function executors take no new calls and finish those they run."""
        self.owned = set()
        self.connector_stop.set()
        for w in self.workers.values():
            w.stop()
        for ex in self.executors.values():
            ex.stop.set()

    def _runs(self) -> list[asyncio.Task[None]]:
        return [*self.tasks.values(), *self.connector_runs.values(), *self.executor_runs.values()]

    @property
    def runnable(self) -> set[Part]:
        """(stage, partition) of every partition this version runs, a drained layout's too."""
        return {(s.index, p) for s in self.laid_out.stages for p in (*s.prev_parts, *s.parts)}

    @property
    def partitions_released(self) -> bool:
        """Its partition workers and connectors have committed and let go: what the next
        version waits for (not for its running calls, which need no handoff)."""
        return all(t.done() for t in [*self.tasks.values(), *self.connector_runs.values()])

    @property
    def stopped(self) -> bool:
        return all(t.done() for t in self._runs())

    async def stop(self) -> None:
        self.begin_stop()
        running = self._runs()
        if running:
            _, pending = await asyncio.wait(running, timeout=10)
            for t in pending:
                t.cancel()

    def report(self, now: float, switching_to: str | None = None) -> AppReport:
        return AppReport(
            version=self.manifest.version, deploy_id=self.manifest.deploy_id, failures=self.failures,
            partitions={part: _partition_report(w, now) for part, w in sorted(self.workers.items())},
            sinks={name: SinkReport(**asdict(st)) for name, st in sorted(self.sink_stats.items())
                   if st.running},
            switching_to=switching_to,
            functions={name: ex.report() for name, ex in sorted(self.executors.items())},
            errors={part: f"worker failed {t.failures} time(s), last: {t.error}"
                    for part, t in sorted(self.troubles.items()) if self._still_failing(part, t)},
        )

    def metrics_view(self) -> tuple[list[PartitionSample], list[FunctionState]]:
        """Its partitions' lag and functions' counts, for a scrape (on the metrics server's
        thread: reads only, over copies of the dicts the loop changes)."""
        slug, version = self.app.slug, self.manifest.version
        parts = [PartitionSample(slug, stage, part, w.pending, w.busy_for())
                 for (stage, part), w in list(self.workers.items())]
        functions = [FunctionState(slug, name, version, ex.stats.done, ex.stats.failed,
                                   ex.stats.cancelled, ex.stats.retried, len(ex.running))
                     for name, ex in list(self.executors.items())]
        return parts, functions

    def _still_failing(self, part: Part, trouble: Trouble) -> bool:
        """Owned here, failed lately, and no worker started since the failure has committed."""
        now = self.workers.get(part)
        recovered = now is not None and now is not trouble.worker and now.progress.commits > 0
        recent = time.monotonic() - trouble.at < TROUBLE_SHOWN
        return part in self.owned and recent and not recovered


def _count_calls_of_old_versions(report: AppReport, others: list[AppHost]) -> AppReport:
    """Calls still running on a retiring version count as running: a long call outlives
    the deploy that replaced its code, and status must not show it as gone."""
    functions = dict(report.functions)
    for other in others:
        for name, ex in other.executors.items():
            if ex.running:
                now = functions.get(name, FunctionReport())
                functions[name] = replace(now, running=now.running + len(ex.running))
    return replace(report, functions=functions)


def _partition_report(w: PartitionWorker, now: float) -> PartitionReport:
    meter = w.rate  # the worker's own: a restarted worker's counters start again at 0
    meter.update(now, w.progress.records, w.progress.messages)
    return PartitionReport(commits=w.progress.commits, records=w.progress.records,
                           dead=w.progress.dead, restores=w.progress.restores,
                           committed_seq=w.state.committed_seq, rate=round(meter.records, 1),
                           msg_rate=round(meter.messages, 2), malformed=w.progress.malformed,
                           busy_for=round(w.busy_for(), 1))


class Runner:
    def __init__(self, url: str, runner_id: str | None = None, cfg: WorkerConfig | None = None,
                 cluster_cfg: ClusterConfig | None = None,
                 checkpoint_cfg: CheckpointConfig | None = None,
                 executor_cfg: ExecutorConfig | None = None, trust: Trust | None = None) -> None:
        self.url = url
        self.trust = trust or Trust()  # no key: every deploy is refused
        self.runner_id = runner_id or cluster.new_runner_id()
        self.cfg = cfg or WorkerConfig()
        self.checkpoint_cfg = checkpoint_cfg or CheckpointConfig()
        self.executor_cfg = executor_cfg or ExecutorConfig()
        self.cluster_cfg = cluster_cfg or ClusterConfig()
        self.hosts: dict[str, AppHost] = {}
        self.retiring: dict[str, list[AppHost]] = {}
        self.manifests: dict[str, Manifest] = {}  # the signed ones, by slug
        self.seen: dict[str, bytes] = {}  # the manifest last read, by slug
        self.unlisted: set[str] = set()  # apps run here but missing from the last listing
        self.errors: dict[str, str] = {}
        self.refused: dict[str, str] = {}  # slug -> deploy id of the deploy errors[slug] is about
        self.started = time.time()
        self.tick_failures = 0
        self.trouble_at = -float("inf")  # monotonic time of the last failed NATS request
        self.trouble_began = -float("inf")  # ... and of the first one of that spell
        self._stop: asyncio.Event | None = None
        self.watch: ClusterWatch | None = None  # from run(): what the cluster buckets' writes say
        self._scheduling: asyncio.Task[None] | None = None
        self._keeping: asyncio.Task[None] | None = None
        self.replacing = ""  # why this process is to be replaced, once asked
        self.metrics: RunnerMetrics | None = None
        self.metrics_address = ""  # host:port of its /metrics, told in its heartbeat

    def serve_metrics(self, host: str, port: int) -> None:
        """Export this runner's metrics on http://host:port/metrics (port 0: any free one)
        from now on; the address goes into the heartbeat, where `wallaroo status` shows it."""
        self.metrics = RunnerMetrics(self.runner_id, self.metrics_view)
        self.metrics_address = serve(self.metrics.registry, host, port).address

    def metrics_view(self) -> RunnerView:
        view = RunnerView()
        hosts = [*self.hosts.values(), *(h for hs in list(self.retiring.values()) for h in hs)]
        for host in hosts:
            parts, functions = host.metrics_view()
            view.partitions.extend(parts)
            view.functions.extend(functions)
        return view

    def replace(self, why: str) -> None:
        """Leave as on SIGTERM (commit, release, hand over), then exit with REPLACE_EXIT so
        the supervisor starts a fresh process: how a thread running a call that was cancelled
        with terminate=True is stopped."""
        self.replacing = why
        if self._stop is not None:
            self._stop.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        nats = await self._connect(stop)
        if nats is None:
            log.info("runner %s stopped before it could reach NATS at %s", self.runner_id, self.url)
            return
        await self._join(nats, stop)
        watch = self.watch = cluster.ClusterWatch(self.cluster_cfg.member_ttl)
        await watch.start(nats)
        leadership = Leadership(nats, self.runner_id, watch)
        log.info("runner %s (pid %d) joined %s", self.runner_id, os.getpid(), self.url)
        beating = asyncio.create_task(self._beat(nats, stop))
        try:
            while not stop.is_set():
                watch.begin()
                await self._tick_safely(nats, leadership)
                await watch.pause(stop, self.cluster_cfg.tick)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            await watch.stop()
            await self._leave(nats, leadership)

    async def _connect(self, stop: asyncio.Event) -> Nats | None:
        """The connection, or None if `stop` came first: a runner told to stop while NATS is
        unreachable (its first connect retries forever) exits at once."""
        connecting = asyncio.create_task(Nats.connect(self.url, name=f"wallaroo-runner-{self.runner_id}"))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if connecting.done():
            return connecting.result()
        connecting.cancel()  # not awaited: nats-py's connect may take its time to give up
        return None

    async def _pause(self, stop: asyncio.Event) -> None:
        await sleep_or_stop(stop, self.cluster_cfg.tick)

    async def _beat(self, nats: Nats, stop: asyncio.Event) -> None:
        """Heartbeat in a loop of its own: a tick held up by a slow NATS request (seconds,
        after a node loss) must not let this runner's membership lapse, or the leader moves
        its partitions away and back for nothing."""
        while not stop.is_set():
            try:
                await self._heartbeat(nats)
            except Exception as err:  # counted and said; the next beat tries again
                self._troubled(err)
                log.warning("heartbeat failed (%d failures so far): %s", self.tick_failures, err)
            await self._pause(stop)

    def _troubled(self, err: BaseException) -> None:
        self.tick_failures += 1
        if unavailable(err):  # not a bug of ours: that must not freeze the assignment
            now = time.monotonic()
            if not self._recent(self.trouble_at, now):
                self.trouble_began = now  # a new spell of trouble
            self.trouble_at = now

    @property
    def nats_troubled(self) -> bool:
        """Did a NATS request of this runner fail lately? Then a member missing from the
        membership may only have failed to beat, like this runner. Only for a while: in a
        spell of trouble that lasts (a stream that lost its replicas for good), a runner
        that is really gone must still lose its partitions."""
        now = time.monotonic()
        ttl = self.cluster_cfg.member_ttl
        return self._recent(self.trouble_at, now) and now - self.trouble_began < TROUBLE_GRACE * ttl

    def _recent(self, at: float, now: float) -> bool:
        return now - at < 2 * self.cluster_cfg.member_ttl

    async def _join(self, nats: Nats, stop: asyncio.Event) -> None:
        """Create the cluster's KV buckets and beat once (a leader counts itself only once
        its beat is in), retrying: a NATS node may be down or its streams electing a leader
        while this runner starts."""
        delays = backoff()
        while not stop.is_set():
            try:
                await cluster.ensure_buckets(nats, self.cluster_cfg)
                await self._heartbeat(nats)
                return
            except Exception as err:  # any NATS error here is worth another try, said aloud
                self._troubled(err)
                log.warning("cannot set up the cluster buckets yet (%s); retrying", err)
            await sleep_or_stop(stop, next(delays))

    async def _tick_safely(self, nats: Nats, leadership: Leadership) -> None:
        try:
            await self._tick(nats, leadership)
        except Exception as err:  # a control loop survives a bad tick, and says so
            self._troubled(err)
            # NATS being away is no bug: one line; anything else with its traceback
            log.error("runner tick failed (%d so far): %s", self.tick_failures, err,
                      exc_info=not unavailable(err))

    async def _tick(self, nats: Nats, leadership: Leadership) -> None:
        # Leadership first: nothing an app does may hold up the assignment.
        if await leadership.campaign():
            members = await cluster.live_members(nats, self.watch)
            for manifest in self.manifests.values():
                await cluster.publish_assignment(nats, manifest, members, keep_current=self.nats_troubled)
            self._fire_schedules(nats)
        known, seen = dict(self.manifests), dict(self.seen)
        await self._sync_apps(nats)
        if leadership.leading:  # a deploy seen just now is assigned now, not a tick later
            await self._assign_new(nats, [m for s, m in self.manifests.items() if known.get(s) is not m])
        for slug, host in self.hosts.items():
            # Calls need no handoff: the new version serves new ones at once, while the old
            # one finishes those it runs.
            host.start_functions()
            old = self.retiring.get(slug, [])
            if not all(h.partitions_released for h in old):
                continue  # previous versions are still finishing their batches
            self.retiring[slug] = [h for h in old if not h.stopped]  # long calls finish there
            host.retire(await observe.retirement_of(nats, host.manifest))
            host.reconcile(await cluster.read_assignment(nats, slug))
            host.start_connectors()
        for slug in [s for s in self.retiring if s not in self.hosts]:  # removed apps
            self.retiring[slug] = [h for h in self.retiring[slug] if not h.stopped]
        if leadership.leading:  # after the reconciles: see LayoutKeeper._reclaim_part
            self._keep_layouts(nats)
        if self.seen != seen:  # a deployer waits for this runner's word on its deploy: now
            await self._heartbeat(nats)

    async def _assign_new(self, nats: Nats, manifests: list[Manifest]) -> None:
        """What the leader's step of the next tick would write for these manifests, written
        at once: a new app's workers start a tick (0.25 s) sooner."""
        members = await cluster.live_members(nats, self.watch) if manifests else []
        for manifest in manifests:
            await cluster.publish_assignment(nats, manifest, members, keep_current=self.nats_troubled)

    def _keep_layouts(self, nats: Nats) -> None:
        """Retire drained layouts and reclaim what they leave (wallaroo_runtime.layouts), in
        a task of its own like _fire_schedules, one pass at a time."""
        if self._keeping is not None and not self._keeping.done():
            return
        keeper = LayoutKeeper(nats, self.runner_id, self.cluster_cfg, self.checkpoint_cfg.store,
                              self._running_here, self.watch)
        self._keeping = asyncio.create_task(self._keep(keeper, list(self.manifests.values())))

    async def _keep(self, keeper: LayoutKeeper, manifests: list[Manifest]) -> None:
        for manifest in manifests:
            try:
                await keeper.keep(manifest)
            except Exception as err:  # every step is repeatable: the next pass goes on
                self._troubled(err)
                log.warning("retiring the drained layouts of %s failed: %s", manifest.slug, err)

    def _running_here(self, slug: str, part: Part) -> bool:
        hosts = [*self.retiring.get(slug, []), *([self.hosts[slug]] if slug in self.hosts else [])]
        return any(h.running(part) for h in hosts)

    def _fire_schedules(self, nats: Nats) -> None:
        """Fire due schedule ticks in a task of its own: a publish waiting out a stream's
        election must not hold up the tick that renews this leader's lease."""
        if self._scheduling is not None and not self._scheduling.done():
            return
        specs = {slug: h.deployed.specs for slug, h in self.hosts.items()}
        self._scheduling = asyncio.create_task(self._fire(nats, specs))

    async def _fire(self, nats: Nats, specs: dict[str, dict[str, FunctionSpec]]) -> None:
        client = CallClient(nats)
        for slug, app_specs in specs.items():
            try:
                await scheduler.fire_due(client, slug, app_specs, time.time())
            except Exception as err:  # the next tick fires what is still due, with the same ids
                self._troubled(err)
                log.warning("firing schedules of %s failed: %s", slug, err)

    async def _leave(self, nats: Nats, leadership: Leadership) -> None:
        """Graceful exit: finish batches, release leases, hand over leadership and membership
        at once instead of letting them lapse."""
        for host in [*(h for hs in self.retiring.values() for h in hs), *self.hosts.values()]:
            await host.stop()
        with contextlib.suppress(WallarooError, OSError, TimeoutError):
            await leadership.resign()
            await nats.kv_delete(MEMBERS_BUCKET, self.runner_id)
        await nats.close()

    async def _sync_apps(self, nats: Nats) -> None:
        listed = await nats.kv_keys(APPS_BUCKET)
        # Gone from two listings in a row: one listing from a replica that lags must not stop
        # every app (they would only be loaded again on the next tick).
        gone = [s for s in self.hosts if s not in listed]
        for slug in [s for s in gone if s in self.unlisted]:
            self._remove(slug)
        self.unlisted = {s for s in gone if s in self.hosts}  # missing once: look again
        for slug in listed:
            raw = await nats.kv_get(APPS_BUCKET, slug)
            if raw is None or self.seen.get(slug) == raw:
                continue  # gone, or nothing new since the last look (refused ones included)
            self.seen[slug] = raw
            try:
                manifest = Manifest.from_wire(raw)
            except (ValueError, TypeError, KeyError) as err:
                self._refuse(slug, "?", "?", f"unreadable manifest: {err}")
                continue
            await self._switch(nats, manifest)

    def _remove(self, slug: str) -> None:
        """The app's manifest is gone (`wallaroo jobs cancel`): its workers commit what they
        hold and stop, as for a new version, but nothing replaces them."""
        host = self.hosts.pop(slug)
        host.begin_stop()
        self.retiring.setdefault(slug, []).append(host)
        self.manifests.pop(slug, None)
        self.seen.pop(slug, None)
        log.info("app %s was removed from the cluster: stopping it", slug)

    async def _switch(self, nats: Nats, manifest: Manifest) -> None:
        """Start a newly deployed version; the old one finishes its batches first."""
        try:
            deployed = await self._load(nats, manifest)
        except Exception as err:  # unsigned, foreign-signed, another Python...: report it
            self._refuse(manifest.slug, manifest.version, manifest.deploy_id,
                         f"{type(err).__name__}: {err}")
            return
        if deployed is None:
            return  # the version running here, deployed again
        old = self.hosts.pop(manifest.slug, None)
        if old is not None:
            # Switch between batches without stalling this loop (and so the heartbeat): the
            # new version's workers start once every older one has committed and let go.
            old.begin_stop()
            self.retiring.setdefault(manifest.slug, []).append(old)
        host = AppHost(nats, manifest, deployed, self.runner_id, self.cfg, self.checkpoint_cfg,
                       self.cluster_cfg, self.executor_cfg, self.replace, metrics=self.metrics,
                       watch=self.watch)
        await host.start()
        self.hosts[manifest.slug] = host
        self._clear_refusal(manifest.slug)
        log.info("loaded %s version %s", manifest.name, manifest.version)

    async def _load(self, nats: Nats, manifest: Manifest) -> App | None:
        """The deployed app, once a trusted key's signature checks out; None for a deploy of
        the version already running here (only its signature is checked)."""
        artifact = await nats.obj_get(ARTIFACTS_BUCKET, manifest.artifact_name)
        if artifact is None:
            msg = f"artifact {manifest.artifact_name} is missing from {ARTIFACTS_BUCKET}"
            raise WallarooError(msg)
        verify_artifact(artifact, manifest, self.trust)
        # Only a signed manifest steers the leader's assignment; it does even where it cannot
        # load (say, a module it imports is missing here).
        self.manifests[manifest.slug] = manifest
        if self._same_version(manifest):
            return None
        return load_artifact(artifact, manifest, self.trust)

    def _same_version(self, manifest: Manifest) -> bool:
        """Adopt a signed re-deploy of the version running here (same code: no switch)."""
        host = self.hosts.get(manifest.slug)
        if host is None or host.manifest.version != manifest.version:
            return False
        if [st.base for st in host.manifest.stages] != [st.base for st in manifest.stages]:
            return False  # other partition numbers: switch, so every worker runs them
        host.manifest = manifest
        host._app = None  # a layout no longer drained is no longer run (its workers stop)
        self._clear_refusal(manifest.slug)  # e.g. a refused deploy undone by this one
        return True

    def _refuse(self, slug: str, version: str, deploy_id: str, why: str) -> None:
        """Remember (and report in the heartbeat) why this deploy cannot run here."""
        self.errors[slug] = f"{version}: {why}"
        self.refused[slug] = deploy_id
        log.error("cannot run %s %s: %s", slug, version, why)

    def _clear_refusal(self, slug: str) -> None:
        self.errors.pop(slug, None)
        self.refused.pop(slug, None)

    def _report(self, slug: str, host: AppHost, now: float) -> AppReport:
        """A version counts as running once the previous one has stopped: `wallaroo deploy`
        waits for that, so what follows a deploy (say, a replay) meets the new code."""
        retiring = self.retiring.get(slug, [])
        switching = next((h for h in retiring if not h.partitions_released), None)
        shown = switching or host
        report = shown.report(now, switching_to=host.manifest.version if switching else None)
        return _count_calls_of_old_versions(report, [h for h in (*retiring, host) if h is not shown])

    async def _heartbeat(self, nats: Nats) -> None:
        now = time.time()
        beat = Heartbeat(
            id=self.runner_id, pid=os.getpid(), host=socket.gethostname(), started=self.started,
            ts=now, tick_failures=self.tick_failures,
            apps={slug: self._report(slug, h, now) for slug, h in self.hosts.items()},
            errors=dict(self.errors), refused=dict(self.refused), metrics=self.metrics_address,
        )
        await nats.kv_put(MEMBERS_BUCKET, self.runner_id, beat.to_wire())


@dataclass(frozen=True)
class RunnerOptions:
    runner_id: str | None = None
    member_ttl: float = 3.0
    state_store: str | None = None  # file:// or s3:// URL; None: no snapshots
    snapshot_every: int = 500
    snapshot_seconds: float = 30.0
    snapshot_bytes: int = CheckpointConfig.max_pending_bytes  # a partition's commits between snapshots
    segment_bytes: int = CheckpointConfig.segment_bytes  # ... and between changelog trims
    # Full snapshots at least this big are compacted by a helper process (0: all of them).
    offload_compaction_bytes: int = CheckpointConfig.offload_bytes
    executor: ExecutorConfig = ExecutorConfig()
    creds: str | None = None  # the runner role's nkey seed file
    trust: Trust = field(default_factory=Trust)  # whose deploys this runner runs
    state_key: bytes | None = None  # MACs snapshots and segments; None: checksums only
    ack_wait: float = WorkerConfig.ack_wait  # stage inputs of a silent runner come back after this
    metrics_host: str = "127.0.0.1"  # where /metrics listens: a VM passes its private address
    metrics_port: int | None = 0  # 0: any free port (status shows it); None: no metrics


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (whether it was done: not on another libc, nor where the
    operator set MALLOC_ARENA_MAX). Why: snapshots and segments are encoded in threads (off
    the event loop), and glibc gives each thread an arena of its own, whose freed megabytes
    stay resident: on 10M words the runner's peak grew to 142-155 MiB against 121 with the
    encoding on the loop; with 2 arenas 124 MiB, records/s and latency unchanged."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    import ctypes  # here: 2.4 ms that only a runner's start needs

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators differ
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def raise_open_files_limit(wanted: int = OPEN_FILES) -> int:
    """Raise this process's soft limit of open files towards `wanted` (never past the hard
    limit, never down); the soft limit now. Why: each partition with commits held for its
    next segment keeps a file open (wallaroo_runtime.spool), on top of its sockets, and a
    runner may own hundreds of partitions; many systems start processes at a soft 1,024."""
    import resource  # here: POSIX only, and only a runner's start needs it

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:  # a kernel cap below an "unlimited" hard limit
            log.warning("open files limit stays %d (raising it to %d failed: %s)", soft, target, err)
    return int(soft)


def checkpoint_config(opts: RunnerOptions, store: StateStore | None,
                      compactor: Compactor | None = None) -> CheckpointConfig:
    return CheckpointConfig(store, opts.snapshot_every, opts.snapshot_seconds,
                            max_pending_bytes=opts.snapshot_bytes,
                            segment_bytes=opts.segment_bytes, state_key=opts.state_key,
                            compactor=compactor, offload_bytes=opts.offload_compaction_bytes)


def main(url: str, opts: RunnerOptions) -> None:
    """Run a runner until SIGINT/SIGTERM (then finish the batches in hand and exit)."""
    # Why: a batch's records and outputs live until its commit, thousands of young objects
    # that CPython's default collector (every 700 allocations) walks again and again, and
    # promotes until a full collection walks the whole heap: a fifth to a third of the
    # runner's time on word count. Collecting every 50,000 allocations cost no memory we
    # could measure (refcounting frees what is not in a cycle) and bought ~+30% records/s.
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL)
    limit_malloc_arenas()  # before any thread allocates
    raise_open_files_limit()
    # Function handles in user code (a stream step calling f.remote) find the cluster here.
    os.environ["WALLAROO_NATS"] = url
    if opts.creds:
        os.environ[CREDS_ENV] = opts.creds  # ... and connect with the runner's credentials
    store = open_store(opts.state_store) if opts.state_store else None
    # (Started at the first compaction it is asked for: most runners never need one.)
    compactor = Compactor(opts.state_store, opts.state_key) if opts.state_store else None
    runner = Runner(url, opts.runner_id, WorkerConfig(ack_wait=opts.ack_wait),
                    ClusterConfig(member_ttl=opts.member_ttl),
                    checkpoint_config(opts, store, compactor), opts.executor, opts.trust)
    if opts.metrics_port is not None:  # before any app loads: every worker gets its observer
        runner.serve_metrics(opts.metrics_host, opts.metrics_port)
        log.info("metrics on http://%s/metrics", runner.metrics_address)

    async def body(stop: asyncio.Event) -> None:
        forbid_blocking_calls()  # this thread runs the loop that beats, leases and commits
        _warn_about_keys(opts, store is not None)
        try:
            await runner.run(stop)
        finally:
            if compactor is not None:
                await compactor.close()
            if store is not None:
                await store.close()

    run_until_signal(body)
    if runner.replacing:
        log.warning("exiting to be replaced (%s)", runner.replacing)
    logging.shutdown()
    # The runner has left (batches committed, leases released). Not sys.exit: the interpreter
    # would wait for threads still running user calls (their calls go to other runners).
    os._exit(REPLACE_EXIT if runner.replacing else 0)


def _warn_about_keys(opts: RunnerOptions, has_store: bool) -> None:
    """Say once, at start, what this runner does not protect against."""
    if not has_store:
        log.warning("no --state-store: no snapshots, changelogs of stateful stages keep growing")
    elif opts.state_key is None:
        log.warning("no --state-key: snapshots are checked by checksum only, so whoever can "
                    "write the state store can change the state runners restore")
    if not opts.trust.check:
        log.warning("--allow-unsigned: this runner runs any deploy, signed or not; whoever can "
                    "write to NATS can run code here")
    else:
        log.info("running deploys signed by %s", opts.trust.expected)
    if os.environ.get(DEPLOY_KEY_ENV):
        log.warning("%s is set but runners do not use it (they verify with --trust public keys); "
                    "remove it: a runner holding the private key could sign code", DEPLOY_KEY_ENV)
