"""`wallaroo dev`'s session on a started cluster: deploy the app, feed it, print its outputs.
While it runs, a supervisor (supervise.py) restarts crashed runners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar

from wallaroo.control import apps, ingest, outputs
from wallaroo.control.status import wait_rollout
from wallaroo.core import observe
from wallaroo.core.errors import NotDeployedError, WallarooError
from wallaroo.core.frames import Framing
from wallaroo.core.keys import load_signing_key
from wallaroo.core.names import AppNames
from wallaroo.core.packaging import load_deployable
from wallaroo.core.wire import Manifest
from wallaroo.functions import App
from wallaroo.local.dev import DevCluster, ServiceProcess, autoscaler_command, follow_wishes
from wallaroo.local.devrun import info
from wallaroo.local.supervise import Supervisor
from wallaroo.nats import Nats
from wallaroo.plan import Application, Stage

PROGRESS_EVERY = 0.5  # seconds between looks at the runners' counts while processing
T = TypeVar("T")


def prepare(app_file: Path, input_file: Path | None, source: str | None, timeout: float,
            autoscale: Sequence[str] | None, max_backlog: int | None = None) -> Session:
    """Load the app and check the input against it: a broken app or input fails before the
    deploy (devrun has launched nats-server and the runners meanwhile)."""
    deployable, _ = load_deployable(app_file)
    app = deployable.built()
    if input_file is not None and source is None and len(app.sources) != 1:
        msg = f"{app.name} has several sources ({', '.join(app.sources)}): pass --source NAME"
        raise WallarooError(msg)
    if input_file is not None:
        _check_input(app.sources.get(source or next(iter(app.sources), "")), input_file)
    return Session(app_file, deployable, app, input_file, source, timeout, autoscale,
                   max_backlog)


def serve(cluster: DevCluster, session: Session) -> int | None:
    """Deploy on the started `cluster`, feed and print (see _session)."""
    return asyncio.run(_session(cluster, session))


def _check_input(stage: Stage | None, input_file: Path) -> None:
    """A binary input cut inside a frame of the source's decoder fails before a cluster
    starts (file_records reads the frame headers first)."""
    if stage is not None and stage.decoder is not None:
        ingest.file_records(input_file, stage.decoder.framing)


@dataclass(frozen=True)
class Session:
    """What one `wallaroo dev` was asked to do, with its app loaded (once: that load serves
    the checks and the deploy)."""

    app_file: Path
    deployable: App  # what the deploy ships: loaded once, here
    app: Application  # its stream part
    input_file: Path | None
    source: str | None
    timeout: float
    autoscale: Sequence[str] | None
    max_backlog: int | None = None  # --max-backlog (None: not given; see input_backlog)


async def _session(cluster: DevCluster, session: Session) -> int | None:
    """The exit code once all input is processed and printed (1 if records were
    dead-lettered); None if interrupted (Ctrl-C/SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = asyncio.create_task(Supervisor(cluster, info).run(stop))
    try:
        with _quiet_once_gone(cluster):
            nats = await Nats.connect(cluster.url, name="wallaroo-dev",
                                      creds=cluster.creds("deployer"), tls_ca=cluster.tls_ca)
            try:
                return await _serve(cluster, nats, stop, supervisor, session)
            finally:
                await nats.close()
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError, WallarooError):
            await supervisor  # its error, if any, was raised by _until already


async def _serve(cluster: DevCluster, nats: Nats, stop: asyncio.Event,
                 supervisor: asyncio.Task[None], session: Session) -> int | None:
    """Deploy, print outputs, size the pool, and feed the input if there is one."""
    manifest = await _until(stop, supervisor, _deploy(nats, cluster, session))
    if manifest is None:
        return None
    printer = await _Printer.start(nats, manifest)
    sizer = asyncio.create_task(_size_pool(nats, cluster, session.autoscale, stop))
    try:
        if session.input_file is None:
            return await _until(stop, supervisor, _forever())
        return await _until(stop, supervisor, _feed(nats, manifest, printer, session))
    finally:
        stop.set()
        if not cluster.server.alive:
            sizer.cancel()  # nothing would answer its reads: not waited for
        with contextlib.suppress(asyncio.CancelledError):
            await sizer
        await printer.stop()


async def _deploy(nats: Nats, cluster: DevCluster, session: Session) -> Manifest:
    """Deploy the app onto what the cluster kept: a new version of it switches to that state
    as `wallaroo deploy` would; one whose stages no longer fit it is refused first."""
    app = session.app
    kept = await _kept_manifest(nats, app.name)
    if kept is not None:
        _refuse_another_shape(kept, app, cluster.state_dir)
    signer = load_signing_key(cluster.deploy_key)
    manifest = await apps.deploy_loaded(nats, session.deployable, session.app_file, signer)
    rollout = await wait_rollout(nats, manifest, timeout=60)
    if not rollout.ok:
        raise WallarooError("; ".join(rollout.problems()))
    info(f"deployed {manifest.name} version {manifest.version}"
         + (" onto the state kept from the last dev here (--fresh starts empty)" if kept else ""))
    return manifest


async def _kept_manifest(nats: Nats, name: str) -> Manifest | None:
    """The app's manifest from an earlier dev in this folder, if the cluster kept one."""
    try:
        return await apps.manifest_of(nats, name)
    except NotDeployedError:
        return None


def _refuse_another_shape(kept: Manifest, app: Application, state_dir: Path) -> None:
    """Keyed state lives in its stage's partitions: an app whose stages changed would look
    its keys up in the wrong place (stage streams are numbered by stage). Other partition
    counts alone are fine: the deploy moves the state by key (wallaroo.core.repartition)."""
    before = [st.name for st in kept.stages]
    now = [st.name for st in app.stages]
    if before != now:
        msg = (f"{app.name}'s stages changed since the state kept in {state_dir} "
               f"({_shape_text([(s.name, s.partitions) for s in kept.stages])}; now "
               f"{_shape_text([(s.name, s.partitions) for s in app.stages])}): its keyed state "
               "would not line up; run `wallaroo dev --fresh` to start empty")
        raise WallarooError(msg)


def _shape_text(shape: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name} x{parts}" for name, parts in shape)


@contextlib.contextmanager
def _quiet_once_gone(cluster: DevCluster) -> Iterator[None]:
    """Drops the NATS client's complaints once nats-server has exited: the supervisor says
    so in one line, where the client would log every failed reconnect until dev stops."""
    logger = logging.getLogger("wallaroo.nats")
    quiet = _UnlessServerGone(cluster)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _UnlessServerGone(logging.Filter):
    def __init__(self, cluster: DevCluster) -> None:
        super().__init__()
        self.cluster = cluster

    def filter(self, record: logging.LogRecord) -> bool:
        return self.cluster.server.alive


async def _size_pool(nats: Nats, cluster: DevCluster, autoscale: Sequence[str] | None,
                     stop: asyncio.Event) -> None:
    """Keep the runner pool at the size asked for in the control bucket: by `wallaroo scale`,
    or by a `wallaroo autoscaler --backend local` process started here with `autoscale` (its
    extra arguments), which writes its decisions there."""
    scaler = None
    if autoscale is not None:
        args = [*autoscale, "--creds", str(cluster.creds("runner")), *cluster.tls_args()]
        scaler = ServiceProcess("autoscaler", autoscaler_command(cluster.url, args),
                                cluster.state_dir / "logs").start()
        info(f"autoscaler process started; its decisions are in {scaler.log_file}")
    try:
        await follow_wishes(nats, cluster.pool, stop, on_change=_scaling)
    finally:
        if scaler is not None:
            scaler.stop()


def _scaling(n: int) -> None:
    info(f"scaling to {n} runner(s)")


async def _forever() -> int | None:
    await asyncio.Event().wait()
    return None


async def _until(stop: asyncio.Event, supervisor: asyncio.Task[None],
                 work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work` until it ends, or `stop` is set (then None); the supervisor's error if dev
    cannot go on (nats-server gone, a runner crash-looping): that is the cause whatever
    `work` then met."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopped, supervisor], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if supervisor.done() and not supervisor.cancelled():
        task.cancel()
        supervisor.result()  # raises its error
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def _feed(nats: Nats, manifest: Manifest, printer: _Printer, session: Session) -> int:
    from wallaroo.control import dlq  # here, not before the deploy: its previews are 0.005 s

    input_file, source, timeout = session.input_file, session.source, session.timeout
    assert input_file is not None  # _serve feeds only a session with an input
    backlog = input_backlog(session.max_backlog, session.autoscale is not None,
                            min(timeout, ingest.STALL))
    framing = ingest.source_framing(manifest, source)
    progress = _Progress(nats, manifest, printer, _count_records(input_file, framing))
    with progress.view:
        # Refreshed while sending too: at the app's pace (--max-backlog) that is most of the
        # run, and the processed count must move with it.
        sent = await progress.while_(ingest.send(
            nats, manifest, source, ingest.file_records(input_file, framing),
            ingest.file_producer_id(input_file), progress=progress.sent, backlog=backlog))
        progress.doing = "processing"
        info(f"sent {sent.records} records from {input_file}"
             + (f" ({sent.records - sent.new} sent before: skipped)" if sent.new < sent.records
                else ""))
        await _finish(nats, manifest, printer, timeout, progress)
    dead = await dlq.count(nats, manifest)
    info(f"done: {printer.count} outputs, {dead} dead letter(s)")
    if not dead:
        return 0
    # Shown here: the cluster stops when dev returns, and `dlq list` with it.
    info(f"the first dead letters (`wallaroo dlq list {manifest.slug}` while a dev runs):")
    for line in await dlq.first_lines(nats, manifest):
        info(line)
    return 1


def input_backlog(max_backlog: int | None, autoscaled: bool, stall: float) -> ingest.Backlog | None:
    """How far --input runs ahead of the app: --max-backlog N (0: no bound); not given,
    INPUT_BACKLOG, or no bound under --autoscale, whose signal that backlog is."""
    if max_backlog is None:
        max_backlog = 0 if autoscaled else ingest.INPUT_BACKLOG
    return ingest.Backlog(max_backlog, stall) if max_backlog else None


def _count_records(path: Path, framing: Framing | None) -> int:
    """What the progress counts up to: the records ingest.file_records will send."""
    return sum(1 for _ in ingest.file_records(path, framing))


async def _finish(nats: Nats, manifest: Manifest, printer: _Printer, timeout: float,
                  progress: _Progress) -> None:
    """Wait until every input is processed and every output printed, showing progress.
    A crashed runner does not end the wait: the supervisor restarts it."""
    try:
        await progress.while_(apps.wait_idle(nats, manifest, timeout))
    except TimeoutError as err:  # an operational failure: one line, not a traceback
        msg = f"{err}; raise --timeout to wait longer"
        raise WallarooError(msg) from None
    target = await nats.stream_last_seq(AppNames(manifest.slug).out_stream)
    while printer.last_seq < target:
        if printer.task.done():
            printer.task.result()  # the printer died (say, stdout closed): say why
            msg = "the output printer stopped before printing every output"
            raise WallarooError(msg)
        await asyncio.sleep(0.02)
    await progress.refresh(last=True)  # with every output counted


class _Progress:
    """`dev --input`'s progress: records sent of the input's, records processed (as the
    runners report them for the app's first stages) and their rate, outputs printed; shown
    by runjob's JobView (a bar when stderr is a terminal and stdout, with the outputs, is
    not: outputs written under a live bar would tear it; else plain lines)."""

    def __init__(self, nats: Nats, manifest: Manifest, printer: _Printer, total: int) -> None:
        from wallaroo.local.runjob import JobView  # here: runjob imports this module

        self.nats, self.manifest, self.printer, self.total = nats, manifest, printer, total
        self.view = JobView(sys.stderr.isatty() and not sys.stdout.isatty(), counting="records")
        self.sent_records, self.processed, self.rate = 0, 0, 0.0
        self.doing = "sending"

    def sent(self, records: int) -> None:
        self.sent_records = records
        self.show(self.doing)

    async def while_(self, work: Awaitable[T]) -> T:
        """`work`'s result, refreshing every PROGRESS_EVERY s until it is done."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                await self.refresh()
                await asyncio.wait([task], timeout=PROGRESS_EVERY)
        except BaseException:  # cancelled, or a refresh failed: the work goes too
            task.cancel()
            raise
        return await task

    async def refresh(self, last: bool = False) -> None:
        first = {st.index for st in self.manifest.stages if st.source is not None}
        reports = [r for b in await observe.runner_heartbeats(self.nats)
                   if self.manifest.slug in b.apps
                   for part, r in b.apps[self.manifest.slug].partitions.items()
                   if part[0] in first]
        # A restarted runner counts from 0 again: the count shown never goes back. At the
        # end (every stage idle) all that was sent was processed, reported or not yet.
        reported = self.sent_records if last else sum(r.records for r in reports)
        self.processed = max(self.processed, min(reported, self.sent_records))
        self.rate = sum(r.rate for r in reports)
        self.show(self.doing, last)

    def show(self, doing: str, last: bool = False) -> None:
        from wallaroo.local.runjob import Shown

        self.view.show(Shown(self.sent_records, self.total, self.processed, self.rate, doing,
                             last), self.line)

    def line(self) -> str:
        return (f"sent {self.sent_records:,} of {self.total:,} records; {self.processed:,} "
                f"processed, {self.rate:,.0f}/s; {self.printer.count:,} outputs")


class _Printer:
    """Prints every output as it arrives, in a background task, from `after` on."""

    def __init__(self, nats: Nats, manifest: Manifest, after: int = 0) -> None:
        self.nats, self.manifest = nats, manifest
        self.last_seq = after
        self.count = 0
        self.task = asyncio.create_task(self.run())

    @classmethod
    async def start(cls, nats: Nats, manifest: Manifest) -> _Printer:
        """A printer of this session's outputs: those a kept state already holds were
        printed by the dev that made them (`wallaroo tail` shows them again)."""
        return cls(nats, manifest, await nats.stream_last_seq(AppNames(manifest.slug).out_stream))

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def run(self) -> None:
        named = len(self.manifest.sinks) > 1
        out = sys.stdout.buffer
        async for seq, sink, outs in outputs.tail(self.nats, self.manifest, None,
                                                   self.last_seq + 1):
            out.write(_lines(outs, f"{sink}: ".encode() if named else b""))
            out.flush()
            self.count += len(outs)
            self.last_seq = seq


def _lines(outs: list[bytes], prefix: bytes) -> bytes:
    """One output per line (an encoder's own newline is not doubled), as bytes in one write:
    why not a decode and a write per output: at 100k outputs/s that took a core."""
    if not prefix and all(map(bytes.endswith, outs, repeat(b"\n"))):
        return b"".join(outs)  # the common case (encoders end their lines), checked in C: -30%
    ended = [o if o.endswith(b"\n") else o + b"\n" for o in outs]
    return b"".join(prefix + o for o in ended) if prefix else b"".join(ended)
