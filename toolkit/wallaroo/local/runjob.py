"""`wallaroo run JOB.py`: run a job (an app whose sources are all bounded) to completion, on an
embedded cluster (as `wallaroo dev`) or on a running one, with progress and a summary.

The embedded cluster keeps its state under `--state-dir` between runs: run the same command
again after a crash and the job resumes from its commits (sources from their recorded
offsets, partitions from their changelogs), never processing a committed record twice.
`--fresh` starts over."""

from __future__ import annotations

import asyncio
import glob
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from wallaroo.connectors import FileSink, FileSource, PartsSink
from wallaroo.control import dlq, jobs
from wallaroo.core.errors import AppLoadError, WallarooError
from wallaroo.core.frames import check_file, is_text_file
from wallaroo.core.packaging import load_deployable
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.local.devrun import info
from wallaroo.local.runapp import (
    ROLLOUT_TIMEOUT,
    Access,
    cluster_access,
    connect,
    deploy_and_wait,
    wait_members,
)
from wallaroo.nats import Nats
from wallaroo.pipeline import SinkConfig
from wallaroo.plan import Application

SHOWN_LETTERS = 10  # dead letters the summary shows
PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is no terminal
DONE, DEAD_LETTERED, FAILED = 0, 1, 2  # exit codes


@dataclass(frozen=True)
class JobRun:
    app_file: Path
    url: str | None
    runners: int
    state_dir: Path
    fresh: bool = False
    tls: bool = False
    timeout: float | None = None


def is_job_file(app_file: Path) -> bool:
    deployed, _ = load_deployable(app_file)
    return deployed.entrypoint is None and deployed.built().is_job


def run_job(run: JobRun) -> int:
    """Run the job to its end; the exit code (0: done, 1: records were dead-lettered)."""
    deployed, _ = load_deployable(run.app_file)
    application = deployed.built()
    _check_inputs(run, application)
    if run.url is not None:
        return _deploy_and_follow(run, run.url, cluster_access(None), members=0)
    started = time.time()  # runners' heartbeats from before this belong to an earlier run
    with DevCluster(run.state_dir, run.runners, fresh=run.fresh, tls=run.tls) as cluster:
        info(f"nats-server at {cluster.url}, {run.runners} runner(s), state and logs in "
             f"{run.state_dir}")
        access = Access(cluster.deploy_key, cluster.creds("deployer"), cluster.creds("client"),
                        cluster.tls_ca)
        try:
            return _deploy_and_follow(run, cluster.url, access, members=run.runners,
                                      since=started)
        finally:
            info("stopping runners and nats-server")


def _check_inputs(run: JobRun, app: Application) -> None:
    """A bounded file that is missing is a mistake in the command, not an empty job; and a
    fresh start must not append to the output files of an earlier run."""
    for st in app.stages:
        cfg = st.source_config
        if isinstance(cfg, FileSource) and cfg.is_glob and not glob.glob(cfg.path):
            msg = (f"{run.app_file}: source {st.source!r} reads {cfg.path}, which matches no file; "
                   "give FileSource a pattern that matches the job's input")
            raise AppLoadError(msg)
        if isinstance(cfg, FileSource) and not cfg.is_glob and not Path(cfg.path).is_file():
            msg = (f"{run.app_file}: source {st.source!r} reads {cfg.path}, which is no file; give "
                   "FileSource an existing path (absolute, or relative to where you run this)")
            raise AppLoadError(msg)
        if isinstance(cfg, FileSource):
            _check_frames(cfg)
    for sink in app.sinks:
        earlier = _earlier_output(sink, app.slug) if run.fresh else None
        if earlier is not None:
            msg = (f"--fresh starts job {app.name} over, but its sink {sink.name!r} holds the "
                   f"output of an earlier run: delete {earlier} first")
            raise WallarooError(msg)


def _check_frames(cfg: FileSource) -> None:
    """A binary input of a framed decoder cut inside a frame fails here, naming it, before
    the job starts (its source would otherwise stop there and retry)."""
    framing = cfg.decoder_spec().framing
    for path in map(Path, glob.glob(cfg.path) if cfg.is_glob else [cfg.path]):
        if framing is not None and path.is_file() and not is_text_file(path):
            check_file(path, framing)


def _earlier_output(sink: SinkConfig, slug: str) -> str | None:
    """What to delete before a fresh run, if the sink holds an earlier run's output. Parts
    too: a fresh run cuts its batches anew, so an earlier part's name may then stand for other
    records, and the part there would be kept in place of the new one. Only a local target
    is looked at (the CLI has no S3 client; PartsSink says to clear the target)."""
    if isinstance(sink, FileSink) and Path(f"{sink.path}.commit").exists():
        return f"{sink.path} and {sink.path}.commit"
    if isinstance(sink, PartsSink) and sink.s3 is None:
        target = Path(sink.target)
        if target.is_dir() and any(target.glob(f"part-{slug}-*")):
            return f"{target}/part-{slug}-*"
    return None


def _deploy_and_follow(run: JobRun, url: str, access: Access, members: int,
                       since: float = 0.0) -> int:
    """`members`: the runners the embedded cluster started, awaited before the deploy when
    more than one: deployed to the first alone, the job would start there and move half its
    partitions (state restores, a handoff per partition) as each other runner joins."""
    async def body() -> int:
        nats = await connect(url, access)
        try:
            if members > 1:
                await wait_members(nats, members, ROLLOUT_TIMEOUT, since)
            manifest = await deploy_and_wait(nats, run.app_file, access)
            info(f"job {manifest.name} version {manifest.version} deployed; running it to the end")
            return await _follow(nats, manifest, run)
        finally:
            await nats.close()

    return asyncio.run(body())


async def _follow(nats: Nats, manifest: Manifest, run: JobRun) -> int:
    started = time.monotonic()
    with JobView(sys.stderr.isatty()) as view:
        final = await jobs.follow(nats, manifest, view.update, timeout=run.timeout)
    info(f"job {manifest.name} done in {time.monotonic() - started:.1f}s: {final.records:,} "
         f"record(s) processed in all, {final.read:,} byte(s) of input in all, "
         f"{final.parts} partition(s) flushed")
    if not final.dead:
        return DONE
    letters = await dlq.first_lines(nats, manifest, limit=SHOWN_LETTERS)
    info(f"{final.dead} dead letter(s); " + (
        f"`wallaroo dlq list {manifest.slug}` lists them" if run.url else
        f"the first {len(letters)} (the embedded cluster stops now; its state stays in "
        f"{run.state_dir}):"))
    if run.url is None:
        for line in letters:
            info(line)
    return DEAD_LETTERED


class JobView:
    """Progress of a job: a rich bar on a terminal (input read of its total, records/s,
    ETA), else a plain line every PLAIN_EVERY seconds. `wallaroo dev --input` shows its
    records sent of its input's the same way (`counting="records"`)."""

    def __init__(self, tty: bool, clock: Callable[[], float] = time.monotonic,
                 counting: Literal["bytes", "records"] = "bytes") -> None:
        self.tty, self.clock, self.last_line = tty, clock, -PLAIN_EVERY
        self.counting = counting
        self.bar: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> JobView:
        if self.tty:
            amount = DownloadColumn() if self.counting == "bytes" else MofNCompleteColumn()
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), amount,
                                TextColumn("{task.fields[records]} records, {task.fields[rate]}/s"),
                                TimeRemainingColumn(), transient=False,
                                # the terminal tested above; stdout may carry outputs (dev)
                                console=Console(stderr=True))
            self.bar.start()
            first = "reading" if self.counting == "bytes" else "sending"
            self.task = self.bar.add_task(first, total=None, records=0, rate=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, state: jobs.JobState) -> None:
        self.show(Shown(state.read, state.total, state.records, state.rate,
                        "flushing" if state.total == state.read else "reading",
                        state.finished), lambda: plain_line(state))

    def show(self, shown: Shown, line: Callable[[], str]) -> None:
        """The bar, or `line()` when a plain line is due (the last one always is)."""
        if self.bar is not None:
            self.bar.update(self.task, completed=shown.done, total=shown.total,
                            records=f"{shown.records:,}", rate=f"{shown.rate:,.0f}",
                            description=shown.description)
            return
        now = self.clock()
        if shown.last or now - self.last_line >= PLAIN_EVERY:
            self.last_line = now
            info(line())


@dataclass(frozen=True)
class Shown:
    """What a JobView shows: `done` of `total` (None: not known yet) of the input, records
    processed and their rate; `last`: the final state (its plain line is always shown)."""

    done: int
    total: int | None
    records: int
    rate: float
    description: str
    last: bool = False


def plain_line(state: jobs.JobState) -> str:
    return (f"read {state.read_text()}; {state.records:,} records, {state.rate:,.0f}/s; "
            f"{state.parts_ended}/{state.parts} partitions ended; {state.dead} dead-lettered")
