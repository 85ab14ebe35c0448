"""The `wallaroo` command. Thin commands: parse, call a library function, print."""

# No `from __future__ import annotations` here: typer reads every command's signature when
# any command runs, and string annotations made it compile and evaluate each one again
# (0.02 s of every command's start); evaluated once, at import, they cost half.
import contextlib
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from wallaroo.core.errors import WallarooError
from wallaroo.local.scaffold import Template
from wallaroo.nats.protocol import CREDS_ENV, TLS_CA_ENV

# What a command needs is imported in its body: parsing any command, and `dev` up to its
# nats-server's start, must not pay for every other command's imports (the NATS client, the
# wire types, rich's tables: a quarter of a second).
if TYPE_CHECKING:
    from wallaroo.control.ingest import Sent
    from wallaroo.core.wire import DeadLetter, Manifest
    from wallaroo.nats import Nats

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
                  help="Exactly-once stream processing on NATS JetStream.")
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect the dead-letter stream.")
app.add_typer(dlq_app, name="dlq")
calls_app = typer.Typer(no_args_is_help=True, help="Show or cancel function calls by id.")
app.add_typer(calls_app, name="calls")
jobs_app = typer.Typer(help="List jobs (apps whose sources are all bounded) or cancel one.")
app.add_typer(jobs_app, name="jobs")
keys_app = typer.Typer(no_args_is_help=True, help="Make the keys deploys are signed with and "
                       "runners check snapshots with.")
app.add_typer(keys_app, name="keys")
infra_app = typer.Typer(no_args_is_help=True, help="Secrets of a cluster built by infra/: put "
                        "them in SSM Parameter Store, fetch them at boot, issue node certificates.")
app.add_typer(infra_app, name="infra")
CREDS_HELP = ("nkey seed file to connect with (default: $WALLAROO_CREDS, else the role's file "
              "of the `wallaroo dev` in this folder, .wallaroo/dev/creds/)")
TLS_CA_HELP = ("CA to verify a tls:// server with (default: $WALLAROO_TLS_CA, else the CA of the "
               "`wallaroo dev --tls` in this folder, .wallaroo/dev/tls/ca.pem)")
TlsCaOpt = Annotated[Path | None, typer.Option("--tls-ca", help=TLS_CA_HELP, dir_okay=False)]


@app.callback()
def _global(creds: Annotated[Path | None, typer.Option("--creds", help=CREDS_HELP,
                             dir_okay=False)] = None, tls_ca: TlsCaOpt = None) -> None:
    """Exactly-once stream processing and serverless functions on NATS JetStream."""
    if creds is not None:
        os.environ[CREDS_ENV] = str(creds)  # every connection of this command uses it
    _use_tls_ca(tls_ca)


def _use_tls_ca(tls_ca: Path | None) -> None:
    if tls_ca is not None:
        os.environ[TLS_CA_ENV] = str(tls_ca)  # every connection of this command verifies with it


NatsOpt = Annotated[str | None, typer.Option("--nats", help="NATS URL (default: $WALLAROO_NATS, "
                                             "the running dev cluster, or nats://127.0.0.1:4222)")]
MaxBacklogOpt = Annotated[int, typer.Option(min=0, help="keep at most N messages (batches of up "
                          "to 256 records) waiting unprocessed in the source: the send waits for "
                          "the app, and stops with an error once it has taken none for 2 minutes; "
                          "bounds what nats-server holds for a big input (and the lag the "
                          "autoscaler sees); 0: no bound")]
MetricsPortOpt = Annotated[int, typer.Option(min=0, max=65535, help="serve Prometheus /metrics "
                          "on this port (0: any free port; `wallaroo status` lists it)")]
MetricsHostOpt = Annotated[str, typer.Option(envvar="WALLAROO_METRICS_HOST", help="address "
                           "/metrics listens on (a VM's private address, scraped inside the VPC)")]
AppFile = Annotated[Path, typer.Argument(metavar="APP.py", help="the app's .py file", exists=True,
                                         dir_okay=False)]


def default_nats() -> str:
    """--nats default: $WALLAROO_NATS, a `wallaroo dev` here, localhost."""
    from wallaroo.core.calls import cluster_url

    return cluster_url()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command body; a WallarooError or a failed NATS request becomes a one-line error
    and exit code 1."""
    import asyncio

    from wallaroo.nats import nats_failure

    try:
        return asyncio.run(coro)
    except WallarooError as err:
        fail(str(err))
    except Exception as err:
        if not nats_failure(err):
            raise
        fail(_nats_failure_text(err))


def _nats_failure_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".removesuffix(": ")
    if isinstance(err, TimeoutError):
        # A request a role may not make is dropped by the server: the client sees a timeout.
        return (f"NATS did not answer ({text}): the server is overloaded or leaderless, or the "
                "credentials in use may not do this (a deployer's are needed to deploy, scale "
                "or replay): see --creds")
    return f"NATS refused the request ({text})"


def fail(text: str) -> NoReturn:
    typer.secho(f"error: {text}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1) from None


async def _connect(url: str | None, role: str) -> "Nats":
    from wallaroo.core.calls import cluster_creds, cluster_tls_ca
    from wallaroo.nats import Nats

    return await Nats.connect(url or default_nats(), name="wallaroo-cli", persistent=False,
                              creds=cluster_creds(role), tls_ca=cluster_tls_ca())


def on_nats(url: str | None, fn: Callable[["Nats"], Awaitable[T]], role: str = "client") -> T:
    """Connect as `role` (its credentials: --creds, $WALLAROO_CREDS, or those of the
    `wallaroo dev` in this folder), run `fn`, close: every command that talks to NATS."""

    async def body() -> T:
        nc = await _connect(url, role)
        try:
            return await fn(nc)
        finally:
            await nc.close()

    return run(body())


@app.command()
def dev(
    app_file: AppFile,
    input: Annotated[Path | None, typer.Option("--input", "-i", exists=True, dir_okay=False,
                     help="send this file's records (frames when the source's decoder declares "
                     "header_length/length_fmt, else non-empty lines), print all output, then "
                     "exit")] = None,
    runners: Annotated[int, typer.Option(min=1, max=64, help="runner processes")] = 1,
    source: Annotated[str | None, typer.Option(help="source to feed (if the app has several)")] = None,
    state_dir: Annotated[Path, typer.Option(help="nats-server data and logs")] = Path(".wallaroo/dev"),
    timeout: Annotated[float, typer.Option(help="give up waiting for output after N s (and, "
                       "while --input is sent, once the app has taken none of it for N s, at "
                       "most 120)")] = 600.0,
    autoscale: Annotated[bool, typer.Option("--autoscale", help="size the runner pool from "
                         "queue lag (between --min-runners and --max-runners)")] = False,
    min_runners: Annotated[int, typer.Option(min=0, help="with --autoscale; 0 allows scale "
                           "to zero after --idle-to-zero seconds")] = 1,
    max_runners: Annotated[int, typer.Option(min=1, help="with --autoscale")] = 4,
    idle_to_zero: Annotated[float | None, typer.Option(help="with --autoscale and "
                            "--min-runners 0")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="nats-server speaks TLS only, with a CA "
                   "made for it (STATE_DIR/tls/ca.pem), which commands run here verify")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="start with an empty cluster instead "
                     "of the state, streams and outputs the last dev here left")] = False,
    max_backlog: Annotated[int | None, typer.Option(min=0, help="keep at most N messages "
                           "(batches of up to 256 records) of --input waiting unprocessed, as a "
                           "file source pulled at the app's pace; 0: send it all at once "
                           "(default: 256, or 0 with --autoscale, whose signal is that lag)")] = None,
) -> None:
    """Run APP on a local cluster (embedded nats-server + runners), printing every output."""
    from wallaroo.local.devrun import run_dev

    scaler_args = None
    if autoscale:
        _policy(min_runners, max_runners, 30.0, idle_to_zero)  # a bad combination fails here
        scaler_args = ["--min-runners", str(min_runners), "--max-runners", str(max_runners),
                       "--interval", "0.5"]
        scaler_args += ["--idle-to-zero", str(idle_to_zero)] if idle_to_zero is not None else []
    try:
        code = run_dev(app_file, input, runners, source, state_dir, timeout, scaler_args, tls,
                       fresh, max_backlog)
    except WallarooError as err:
        fail(str(err))
    raise typer.Exit(code)


@app.command()
def init(
    name: Annotated[str, typer.Argument(metavar="NAME", help="the project: its folder (made "
                                       "here) and its app's name")],
    template: Annotated[Template, typer.Option("--template", "-t", help="stream (a keyed word "
                        "count), functions (an App with functions and a local entrypoint) or "
                        "job (a bounded FileSource job writing part files)")] = Template.stream,
) -> None:
    """Make ./NAME: a small project from a template (the app, sample input, a README, and a
    test to run with pytest)."""
    from rich.console import Console

    from wallaroo.local import scaffold

    try:
        created = scaffold.create(name, template, Path())
    except scaffold.ProjectNameError as err:
        raise typer.BadParameter(str(err), param_hint="NAME") from None
    except (WallarooError, OSError) as err:
        fail(str(err))
    Console().print(scaffold.summary(created))


@app.command()
def deploy(
    app_file: AppFile,
    nats: NatsOpt = None,
    wait: Annotated[bool, typer.Option(help="wait until every live runner runs it")] = True,
    wait_timeout: Annotated[float, typer.Option(help="seconds to wait for the rollout")] = 60.0,
    key: Annotated[Path | None, typer.Option("--key", envvar="WALLAROO_DEPLOY_KEY", metavar="FILE",
                   help="ed25519 private key to sign with (`wallaroo keys generate`; default: "
                   "the key of a `wallaroo dev` running in this folder)")] = None,
) -> None:
    """Package APP (cloudpickle + manifest), sign it and ship it to the runners through NATS;
    runners switch between batches, keeping state. Exits 1 when a runner refuses it or the
    rollout times out."""
    from wallaroo.control import apps

    async def body(nc: "Nats") -> bool:
        m = await apps.deploy(nc, app_file, key=key)
        typer.echo(f"deployed {m.name} version {m.version} ({len(m.stages)} stages, "
                   f"{sum(s.partitions for s in m.stages)} partitions)")
        return await _roll_out(nc, m, wait, wait_timeout)

    if not on_nats(nats, body, role="deployer"):
        raise typer.Exit(1)


async def _roll_out(nc: "Nats", m: "Manifest", wait: bool, wait_timeout: float) -> bool:
    """Warn about an unsigned version, then follow its rollout (unless not to wait): True
    when every live runner runs it."""
    from wallaroo.control import status as st

    if not m.signature:
        typer.secho("warning: unsigned (no --key, $WALLAROO_DEPLOY_KEY or dev cluster key): "
                    "only runners started with --allow-unsigned run it", err=True,
                    fg=typer.colors.YELLOW)
    return not wait or _report_rollout(await st.wait_rollout(nc, m, wait_timeout, _show_rollout))


_shown: list[str] = []  # the rollout line printed last (plain output repeats no line)


def _show_rollout(state: Any) -> None:
    """Rollout progress: one line rewritten in place on a terminal, else a line per change
    (a log must not fill with carriage returns)."""
    total = len(state.ready) + len(state.failed) + len(state.waiting)
    line = f"rollout: {len(state.ready)}/{total} runner(s) on {state.version}"
    if sys.stderr.isatty():
        typer.echo(f"\r{line}", err=True, nl=False)
    elif _shown[-1:] != [line]:
        typer.echo(line, err=True)
    _shown[:] = [line]


def _report_rollout(state: Any) -> bool:
    """Print a line per refusing runner and one for a timeout; True when all went well."""
    if sys.stderr.isatty():
        typer.echo("", err=True)  # ends the line rewritten in place
    for line in state.problems():
        typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
    return bool(state.ok)


@app.command()
def rollback(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    to: Annotated[str | None, typer.Option("--to", metavar="VERSION", help="the version to go "
                  "back to, or a unique prefix of it (`wallaroo versions APP`); without it, "
                  "the one deployed before the current one")] = None,
    nats: NatsOpt = None,
    wait: Annotated[bool, typer.Option(help="wait until every live runner runs it")] = True,
    wait_timeout: Annotated[float, typer.Option(help="seconds to wait for the rollout")] = 60.0,
    key: Annotated[Path | None, typer.Option("--key", envvar="WALLAROO_DEPLOY_KEY", metavar="FILE",
                   help="ed25519 private key to sign with, as for deploy")] = None,
) -> None:
    """Point APP back at an earlier deployed version (its stored artifact: no app file
    needed), signed anew; runners switch between batches, keeping state. Exits 1 when a
    runner refuses it or the rollout times out."""
    from wallaroo.control import versions

    if to == "":
        msg = "--to needs a version (or a prefix of one)"
        raise typer.BadParameter(msg)

    async def body(nc: "Nats") -> bool:
        before, m = await versions.rollback(nc, app_name, to, key)
        typer.echo(f"rolled {m.name} back from version {before.version} to {m.version}")
        return await _roll_out(nc, m, wait, wait_timeout)

    if not on_nats(nats, body, role="deployer"):
        raise typer.Exit(1)


@app.command("versions")
def versions_command(app_name: Annotated[str, typer.Argument(metavar="APP")],
                     nats: NatsOpt = None) -> None:
    """APP's deployed versions, the most recent first: when each was deployed, how often,
    its partitions per stage, which key signed it, and which one is current (what
    `wallaroo rollback` can go to)."""
    from datetime import UTC, datetime

    from wallaroo.control import versions

    found = on_nats(nats, lambda nc: versions.deploys(nc, app_name))

    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    rows = [[v.manifest.version, when(v.manifest.created), when(v.first_deployed), str(v.deploys),
             "+".join(str(s.partitions) for s in v.manifest.stages),
             v.manifest.signature.rpartition(":")[0] or "unsigned",
             "yes" if v.current else ""] for v in found.versions()]
    _table(["version", "deployed", "first deployed", "deploys", "partitions", "signed by", "current"],
           rows, "")


@app.command()
def send(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    source: Annotated[str, typer.Argument(help="source name")],
    values: Annotated[list[str] | None, typer.Argument(help="records to send")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", exists=True, dir_okay=False,
                    help="send each record of this file: its frames when the source's decoder "
                    "declares header_length/length_fmt, else each non-empty line")] = None,
    producer: Annotated[str | None, typer.Option(help="producer id for dedup (default: "
                        "the file's content hash, or a fresh id)")] = None,
    max_backlog: MaxBacklogOpt = 0,
    nats: NatsOpt = None,
) -> None:
    """Send records to a deployed app's source (exactly once per producer id)."""
    from wallaroo.control import apps, ingest

    if (file is None) == (not values):
        msg = "give either --file F or VALUE... (not both, not neither)"
        raise typer.BadParameter(msg)

    async def body(nc: "Nats") -> "Sent":
        manifest = await apps.manifest_of(nc, app_name)
        if file is not None:
            records = ingest.file_records(file, ingest.source_framing(manifest, source))
            pid = producer or ingest.file_producer_id(file)
        else:
            records = iter([v.encode() for v in values or []])
            pid = producer or ingest.fresh_producer_id()
        backlog = ingest.Backlog(max_backlog) if max_backlog else None
        return await ingest.send(nc, manifest, source, records, pid, backlog=backlog)

    sent = on_nats(nats, body)
    typer.echo(f"sent {sent.records} record(s) to {app_name}/{source}" + (
        "" if sent.new == sent.records else
        f"; {sent.new} new, {sent.records - sent.new} sent before (the same producer id: "
        "dropped as duplicates)"), err=True)


@app.command()
def tail(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    sink: Annotated[str | None, typer.Argument(help="sink name [default: all sinks]")] = None,
    count: Annotated[int | None, typer.Option(help="stop after N outputs")] = None,
    timeout: Annotated[float | None, typer.Option(help="stop after N seconds")] = None,
    nats: NatsOpt = None,
) -> None:
    """Print a deployed app's outputs, from the first, following new ones."""
    import asyncio

    from wallaroo.control import apps, outputs

    async def body(nc: "Nats") -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follow(nc), timeout)

    async def follow(nc: "Nats") -> None:
        manifest = await apps.manifest_of(nc, app_name)
        seen = 0
        async for _, _, outs in outputs.tail(nc, manifest, sink):
            for out in outs:
                typer.echo(out.decode("utf-8", "replace").removesuffix("\n"))
                seen += 1
                if count is not None and seen >= count:
                    return

    on_nats(nats, body)


@app.command()
def status(
    nats: NatsOpt = None,
    partitions: Annotated[bool, typer.Option("--partitions", help="a row per partition too: "
                          "its owner, committed seq, lag and rate")] = False,
) -> None:
    """Apps, a row per stage (runners, lag, records processed, dead letters), functions (calls
    pending, running, done, failed, retried, latency), the runners, and connector sinks."""
    from wallaroo.control import status as st

    s = on_nats(nats, st.gather)
    _table(st.APP_COLUMNS, s.apps, "no apps deployed")
    if partitions:
        _table(st.PARTITION_COLUMNS, s.partitions, "no partitions")
    if s.functions:
        _table(st.FUNCTION_COLUMNS, s.functions, "")
    _table(st.RUNNER_COLUMNS, s.runners, "no runners")
    if s.sinks:
        _table(st.SINK_COLUMNS, s.sinks, "")
    if s.problems:
        _table(st.PROBLEM_COLUMNS, s.problems, "")


@app.command()
def top(
    nats: NatsOpt = None,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit; its rates "
                    "come from two samples --interval apart")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between samples")] = 1.0,
) -> None:
    """A live view of apps, stages, lag, rates and runners (Ctrl-C quits)."""
    import asyncio

    from wallaroo.control import top as tp

    if once:
        before, now = on_nats(nats, lambda nc: tp.two_samples(nc, interval))
        typer.echo(tp.frame(now, before).text())
        return
    from rich.live import Live

    async def body(nc: "Nats") -> None:
        with Live(refresh_per_second=1) as view:
            await tp.live(nc, interval, lambda f: view.update(f.renderable()), asyncio.Event())

    with contextlib.suppress(KeyboardInterrupt):
        on_nats(nats, body)


def _table(columns: list[str], rows: list[list[str]], empty: str) -> None:
    from wallaroo.control.tables import render_table

    # On a terminal the table fits its width; in a pipe or file, a line per row.
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    typer.echo(render_table(columns, rows, width) if rows else empty)
    typer.echo("")


def _policy(min_runners: int, max_runners: int, target_catchup: float,
            idle_to_zero: float | None, down_window: float = 30.0) -> Any:
    from wallaroo_runtime.autoscale.policy import Policy

    try:
        return Policy(min_runners=min_runners, max_runners=max_runners,
                      target_catchup=target_catchup, idle_to_zero=idle_to_zero,
                      down_stabilization=down_window)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
def scale(
    runners: Annotated[int, typer.Option("--runners", min=0, help="how many runners")],
    nats: NatsOpt = None,
) -> None:
    """Resize the runner pool of the local cluster that `wallaroo dev` runs: the runners are
    shared by every app deployed there, so there is no app to name."""
    from wallaroo.control.scale import request_runners

    on_nats(nats, lambda nc: request_runners(nc, runners), role="deployer")
    typer.echo(f"asked the local cluster for {runners} runner(s); `wallaroo status` shows them "
               "join or leave")


@app.command()
def autoscaler(
    backend: Annotated[str, typer.Option(help="local (the runner pool of a `wallaroo dev`, "
                       "through the control bucket), aws "
                       "(an EC2 autoscaling group) or static (decide and log only)")] = "local",
    min_runners: Annotated[int, typer.Option(min=0)] = 1,
    max_runners: Annotated[int, typer.Option(min=1)] = 8,
    target_catchup: Annotated[float, typer.Option(help="seconds to drain a backlog")] = 30.0,
    down_window: Annotated[float, typer.Option(help="seconds a lower count must persist")] = 30.0,
    idle_to_zero: Annotated[float | None, typer.Option(help="idle seconds before 0 runners "
                            "(needs --min-runners 0)")] = None,
    asg_group: Annotated[str | None, typer.Option(help="autoscaling group (aws)")] = None,
    region: Annotated[str, typer.Option(help="AWS region (aws)")] = "us-east-1",
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between decisions")] = 2.0,
    nats: NatsOpt = None,
    creds: Annotated[Path | None, typer.Option("--creds", help="nkey seed file (the runner role "
                     "reads lags and writes the control bucket; default: $WALLAROO_CREDS)",
                     dir_okay=False)] = None,
    tls_ca: TlsCaOpt = None,
    metrics_port: MetricsPortOpt = 0,
    metrics_host: MetricsHostOpt = "127.0.0.1",
) -> None:
    """Follow queue lag: observe lag and rates, decide a runner count, act through a backend.
    Every decision is logged with its reason, and exported on /metrics."""
    from wallaroo_runtime.autoscale.main import main as autoscaler_main

    policy = _policy(min_runners, max_runners, target_catchup, idle_to_zero, down_window)
    if backend not in ("local", "aws", "static"):
        msg = f"--backend must be local, aws or static, not {backend!r}"
        raise typer.BadParameter(msg)
    if backend == "aws" and not asg_group:
        msg = "--backend aws needs --asg-group NAME"
        raise typer.BadParameter(msg)
    if creds is not None:
        os.environ[CREDS_ENV] = str(creds)
    _use_tls_ca(tls_ca)
    try:
        autoscaler_main(nats or default_nats(), backend, policy, interval, asg_group, region,
                        (metrics_host, metrics_port))
    except WallarooError as err:
        fail(str(err))


@app.command()
def runner(
    nats: NatsOpt = None,
    runner_id: Annotated[str | None, typer.Option("--id", help="runner id (default: "
                         "host-pid-random)")] = None,
    member_ttl: Annotated[float, typer.Option(min=0.5, help="seconds of silence after which "
                          "a runner is declared gone")] = 3.0,
    state_store: Annotated[str | None, typer.Option(envvar="WALLAROO_STATE_STORE", help="where "
                           "snapshots go: file:///dir or s3://bucket/prefix")] = None,
    snapshot_every: Annotated[int, typer.Option(min=1, help="commits between snapshots")] = 500,
    snapshot_seconds: Annotated[float, typer.Option(min=0.1, help="seconds between "
                                "snapshots")] = 30.0,
    snapshot_bytes: Annotated[int, typer.Option(min=4096, help="bytes of commits after which "
                              "a partition snapshots: a shorter replay at a restore, more "
                              "frequent snapshots (see README, Sources, sinks and state)")] = 4 << 20,
    segment_bytes: Annotated[int, typer.Option(min=4096, help="bytes of commits a partition "
                             "stores as a changelog segment between snapshots, trimming its "
                             "changelog: what nats-server keeps of it")] = 1 << 20,
    offload_compaction_bytes: Annotated[int, typer.Option(min=0, help="a partition whose last "
                                        "full snapshot is this big or bigger has the next one "
                                        "written by a helper process, from the stored snapshots, "
                                        "off the runner's interpreter (0: every partition)")
                                        ] = 256 << 10,
    call_ack_wait: Annotated[float, typer.Option(min=0.5, help="seconds after which a call "
                             "whose runner went silent is delivered to another")] = 10.0,
    ack_wait: Annotated[float, typer.Option(min=0.5, help="seconds after which stage inputs "
                        "a silent runner fetched are delivered again")] = 60.0,
    call_max_deliveries: Annotated[int, typer.Option(min=1, help="deliveries of one call "
                                   "before it fails with RunnerLost")] = 8,
    creds: Annotated[Path | None, typer.Option("--creds", help="the runner role's nkey seed "
                     "file (default: $WALLAROO_CREDS)", dir_okay=False)] = None,
    tls_ca: TlsCaOpt = None,
    trust: Annotated[list[Path] | None, typer.Option("--trust", metavar="PUBKEY_FILE", help="run "
                     "deploys signed by this public key; repeatable (default: "
                     "$WALLAROO_TRUSTED_KEYS, paths separated by os.pathsep)")] = None,
    allow_unsigned: Annotated[bool, typer.Option("--allow-unsigned", help="run every deploy, "
                              "signed or not: whoever can write to NATS runs code here")] = False,
    state_key: Annotated[Path | None, typer.Option("--state-key", envvar="WALLAROO_STATE_KEY",
                         metavar="FILE", help="MAC snapshots and segments with this key "
                         "(`wallaroo keys state`); every runner needs the same one")] = None,
    metrics_port: MetricsPortOpt = 0,
    metrics_host: MetricsHostOpt = "127.0.0.1",
) -> None:
    """Run a long-lived runner: join the cluster, run the partitions and serve the
    functions assigned to it. It runs only deploys signed by a key it trusts (--trust)."""
    from wallaroo.core import keys
    from wallaroo_runtime.executor import ExecutorConfig
    from wallaroo_runtime.runner import RunnerOptions
    from wallaroo_runtime.runner import main as runner_main

    _use_tls_ca(tls_ca)  # the runner's connections verify the server with it
    try:
        opts = RunnerOptions(
            runner_id, member_ttl, state_store, snapshot_every, snapshot_seconds,
            snapshot_bytes=snapshot_bytes, segment_bytes=segment_bytes,
            offload_compaction_bytes=offload_compaction_bytes,
            executor=ExecutorConfig(call_ack_wait, call_max_deliveries),
            creds=str(creds) if creds else os.environ.get(CREDS_ENV),
            trust=keys.runner_trust(trust or [], allow_unsigned),
            state_key=keys.load_state_key(state_key) if state_key else None, ack_wait=ack_wait,
            metrics_host=metrics_host, metrics_port=metrics_port)
        runner_main(nats or default_nats(), opts)
    except WallarooError as err:
        fail(str(err))


@app.command("run")
def run_command(
    app_file: AppFile,
    nats: Annotated[str | None, typer.Option("--nats", help="deploy to this cluster (default: "
                    "start an embedded one, as `wallaroo dev`, and stop it at the end)")] = None,
    runners: Annotated[int, typer.Option(min=1, max=64, help="runners of the embedded "
                       "cluster")] = 1,
    state_dir: Annotated[Path, typer.Option(help="the embedded cluster's data and logs (a "
                         "job resumes from them)")] = Path(".wallaroo/run"),
    tls: Annotated[bool, typer.Option("--tls", help="the embedded cluster speaks TLS only")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="a job: start over instead of resuming "
                     "from the state of an earlier run")] = False,
    timeout: Annotated[float | None, typer.Option(min=0.1, help="a job: give up after N "
                       "seconds")] = None,
) -> None:
    """Run a job (an app whose sources are all bounded) to its end, with progress and a
    summary; exit 0 when done, 1 if records were dead-lettered, 2 if it could not run. Or
    deploy APP and run its @app.local_entrypoint() here, against the deployed functions."""
    from wallaroo.local import runjob
    from wallaroo.local.runapp import run_app

    try:
        if runjob.is_job_file(app_file):
            job = runjob.JobRun(app_file, nats, runners, state_dir, fresh, tls, timeout)
            raise typer.Exit(runjob.run_job(job))
        run_app(app_file, nats, runners, state_dir, tls)
    except (WallarooError, TimeoutError) as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(runjob.FAILED) from None


@app.command()
def call(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    function: Annotated[str, typer.Argument(help="function name, or Class.method")],
    args: Annotated[list[str] | None, typer.Argument(metavar="JSON_ARG", help="arguments, "
                    "each a JSON value (a bare word is a string)")] = None,
    spawn: Annotated[bool, typer.Option("--spawn", help="print the call id and return at "
                     "once; see `wallaroo calls show ID`")] = False,
    timeout: Annotated[float | None, typer.Option(help="stop waiting after N seconds (the "
                       "call goes on)")] = None,
    nats: NatsOpt = None,
) -> None:
    """Call a deployed function; print its result as JSON (or its repr)."""
    from wallaroo.control import functions as fns

    try:
        values = fns.parse_args(args or [])
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None

    async def body(nc: "Nats") -> str:
        try:
            return await fns.call(nc, app_name, function, values, spawn, timeout)
        except fns.RemoteFailure as failure:  # the function's own error, raised remotely
            fail(f"{function} raised {failure}; `wallaroo calls show {failure.call_id}` has the "
                 "traceback")
        except TimeoutError:
            fail(f"no result within {timeout}s; the call goes on")

    typer.echo(on_nats(nats, body))


@calls_app.command("show")
def calls_show(
    call_id: Annotated[str, typer.Argument(metavar="ID")],
    nats: NatsOpt = None,
) -> None:
    """A call's status, attempts, runner and value (or error and remote traceback)."""
    from wallaroo.control import functions as fns

    view = on_nats(nats, lambda nc: fns.show(nc, call_id))
    typer.echo("\n".join(view.lines()))


@calls_app.command("cancel")
def calls_cancel(
    call_id: Annotated[str, typer.Argument(metavar="ID")],
    terminate: Annotated[bool, typer.Option("--terminate", help="a running sync call: replace "
                         "the runner process running it")] = False,
    nats: NatsOpt = None,
) -> None:
    """Cancel a call: unstarted, it never runs; running, its result is discarded."""
    from wallaroo.control import functions as fns

    result = on_nats(nats, lambda nc: fns.cancel(nc, call_id, terminate))
    if result.status == "cancelled":
        typer.echo(f"cancelled {call_id}")
    else:
        fail(f"call {call_id} had already finished ({result.status}); nothing to cancel")


@jobs_app.callback(invoke_without_command=True)
def jobs_list(ctx: typer.Context, nats: NatsOpt = None) -> None:
    """Every deployed job: its state, input read, partitions ended, dead letters."""
    if ctx.invoked_subcommand is not None:
        return
    from wallaroo.control import jobs

    found = on_nats(nats, jobs.jobs)
    rows = [[m.name, m.version, "finished" if j.finished else "running", j.read_text(),
             f"{j.parts_ended}/{j.parts}", f"{j.records:,}", str(j.dead)] for m, j in found]
    _table(["job", "version", "state", "input read", "partitions ended", "records",
            "dead letters"], rows, "no jobs deployed")


@jobs_app.command("cancel")
def jobs_cancel(name: Annotated[str, typer.Argument(metavar="NAME")], nats: NatsOpt = None) -> None:
    """Stop a job on every runner. Its streams and state stay: `wallaroo run` resumes it."""
    from wallaroo.control import jobs

    manifest = on_nats(nats, lambda nc: jobs.cancel(nc, name), role="deployer")
    typer.echo(f"cancelled {manifest.name} (version {manifest.version}); runners stop it")


@dlq_app.command("list")
def dlq_list(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    limit: Annotated[int, typer.Option(min=1, help="show the oldest N")] = 100,
    tracebacks: Annotated[bool, typer.Option("--tracebacks", help="show full tracebacks")] = False,
    nats: NatsOpt = None,
) -> None:
    """List dead letters: records that failed in decoding or user code after retries, and
    input messages that did not decode at all (malformed_message: kept whole, not replayable)."""
    from wallaroo.control import apps, dlq
    from wallaroo.control.tables import preview, printable

    async def body(nc: "Nats") -> "list[DeadLetter]":
        return await dlq.dead_letters(nc, await apps.manifest_of(nc, app_name), limit)

    letters = on_nats(nats, body)
    if not letters:
        typer.echo(f"no dead letters for {app_name}")
        return
    rows = [[str(d.seq), d.step, d.reason, str(d.attempts), preview(d.key or ""),
             preview(dlq.record_text(d)), preview(d.error, 200), "yes" if d.replayable else "no"]
            for d in letters]
    _table(["seq", "step", "reason", "attempts", "key", "record", "error", "replay"], rows, "")
    if tracebacks:
        for d in letters:
            where = f" (from {d.subject} seq {d.rid[0]})" if d.subject else ""
            shown = printable(d.traceback, keep="\n")  # the error's text came from the record
            typer.echo(f"--- dead letter {d.seq}{where} ---\n{shown}")


@dlq_app.command("replay")
def dlq_replay(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    seq: Annotated[list[int] | None, typer.Option("--seq", help="replay only these dead letters "
                   "(the seq column of `dlq list`); repeatable")] = None,
    nats: NatsOpt = None,
) -> None:
    """Re-inject dead letters into the stage that rejected them (e.g. after deploying a fix)."""
    from wallaroo.control import apps, dlq
    from wallaroo.control import status as st

    async def body(nc: "Nats") -> int:
        manifest = await apps.manifest_of(nc, app_name)
        # Replay into the deployed version (the fix), not the one runners may still run.
        _report_rollout(await st.wait_rollout(nc, manifest, 60.0, _show_rollout))
        return await dlq.replay_dead_letters(nc, manifest, set(seq) if seq else None)

    typer.echo(f"replayed {on_nats(nats, body, role='deployer')} dead letter(s)")


KeysDir = Annotated[Path, typer.Option("--dir", file_okay=False, help="where to write them")]


@keys_app.command("generate")
def keys_generate(folder: KeysDir = Path(".")) -> None:
    """Write an ed25519 key pair: deploy.key (private, mode 0600) signs deploys, deploy.pub
    goes to every runner (--trust)."""
    from wallaroo.core import keys

    try:
        private, public = keys.generate_pair(folder)
    except WallarooError as err:
        fail(str(err))
    fp = keys.load_signing_key(private).fingerprint
    typer.echo(f"{private}: private key {fp}; sign deploys with it (wallaroo deploy --key, or "
               f"$WALLAROO_DEPLOY_KEY) and keep it off the runners")
    typer.echo(f"{public}: public key {fp}; give it to every runner (wallaroo runner --trust, or "
               f"$WALLAROO_TRUSTED_KEYS)")


@keys_app.command("state")
def keys_state(folder: KeysDir = Path(".")) -> None:
    """Write a state key (state.key, mode 0600): runners MAC snapshots and segments with it
    (--state-key). Every runner of a cluster needs the same one, and nobody else."""
    from wallaroo.core import keys

    try:
        path = keys.generate_state_key(folder / "state.key")
    except WallarooError as err:
        fail(str(err))
    typer.echo(f"{path}: state key; give it to every runner (wallaroo runner --state-key, or "
               f"$WALLAROO_STATE_KEY)")


@keys_app.command("fingerprint")
def keys_fingerprint(
    key_file: Annotated[Path, typer.Argument(metavar="FILE", help="a .key or .pub file")],
) -> None:
    """Print the fingerprint of a key file: what a runner's refusal names."""
    from wallaroo.core import keys

    try:
        typer.echo("\n".join(keys.fingerprints(key_file)))
    except WallarooError as err:
        fail(str(err))



RegionOpt = Annotated[str, typer.Option("--region", help="AWS region of the parameters")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="SSM endpoint other "
                        "than AWS's (a test server)")]


@infra_app.command("secrets")
def infra_secrets(
    name: Annotated[str, typer.Option("--name", help="the deployment's terraform `name`")],
    region: RegionOpt,
    deploy_pub: Annotated[Path, typer.Option("--deploy-pub", exists=True, dir_okay=False,
                          help="deploy.pub (`wallaroo keys generate`): runners run deploys signed "
                          "by its private key; several PEM blocks trust several keys")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="where to write the "
                   "operator's files: deployer.nk, client.nk, ca.pem")],
    endpoint_url: EndpointOpt = None,
    rotate: Annotated[list[str] | None, typer.Option("--rotate", help="make this one anew: "
                      "ca, runner, deployer or client; repeatable (the state key never: "
                      "runners would refuse every snapshot written before)")] = None,
) -> None:
    """Put the cluster's credentials, CA and keys under /wallaroo/NAME/ in SSM (SecureString),
    before `terraform apply`. A rerun keeps what is there, but for --rotate and deploy.pub."""
    from wallaroo.core import keys
    from wallaroo.local.secrets import plan as secrets_plan
    from wallaroo.local.secrets import ssm_path, write_operator_files
    from wallaroo_runtime import ssm

    try:
        keys.load_public_keys(deploy_pub)
        path = ssm_path(name)
        plan = secrets_plan(ssm.read_secrets(path, region, endpoint_url), name,
                            deploy_pub.read_text(), rotate or [])
        ssm.put_secrets(path, plan.changed(), region, endpoint_url, overwrite=True)
    except (WallarooError, ValueError) as err:
        fail(str(err))
    written = write_operator_files(plan.values, out)
    rows = [[f"{path}/{n}", plan.status[n]] for n in sorted(plan.values)]
    _table(["parameter", "status"], rows, "no parameter")
    typer.echo(f"{', '.join(map(str, written))}: yours (connect with --creds and --tls-ca)")


@infra_app.command("fetch")
def infra_fetch(
    path: Annotated[str, typer.Option("--path", help="e.g. /wallaroo/NAME/runner")],
    dest: Annotated[Path, typer.Option("--dest", file_okay=False, help="folder to write one "
                    "file per parameter into (mode 0700, files 0600)")],
    region: RegionOpt,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Fetch every parameter under PATH into DEST: what a VM does at boot, with its role."""
    from wallaroo_runtime import ssm

    try:
        written = ssm.fetch_secrets(path, dest, region, endpoint_url)
    except WallarooError as err:
        fail(str(err))
    typer.echo(f"{dest}: {', '.join(p.name for p in written)}")


@infra_app.command("node-cert")
def infra_node_cert(
    ca_dir: Annotated[Path, typer.Option("--ca-dir", file_okay=False, help="holds ca.pem and "
                      "ca-key.pem (`wallaroo infra fetch` of the nats path)")],
    ips: Annotated[list[str], typer.Option("--ip", help="an address clients and route peers "
                   "reach this node at; repeatable")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="where server.pem and "
                   "server-key.pem go")],
) -> None:
    """Issue this NATS node's certificate (server and route client) for its addresses."""
    from wallaroo.local.tls import write_node_cert

    try:
        cert, key = write_node_cert(ca_dir, ips, out)
    except (WallarooError, ValueError) as err:
        fail(str(err))
    typer.echo(f"{cert}, {key}: valid for {', '.join(ips)}")


def main() -> None:
    try:
        app(prog_name="wallaroo")
    except OSError as err:
        # A file or folder a command could not read or write (a state dir, a key folder):
        # the operator's to fix, and the error names it; a traceback would bury that.
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
