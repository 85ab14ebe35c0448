"""The `wallaroo` command. Thin commands: parse, call a library function, print."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from wallaroo import ops
from wallaroo.errors import WallarooError
from wallaroo.natsio import Nats
from wallaroo.tables import render_table

T = TypeVar("T")
DEFAULT_NATS = "nats://127.0.0.1:4222"
DEV_URL_FILE = Path(".wallaroo/dev/url")

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Exactly-once stream processing on NATS JetStream.")
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect the dead-letter stream.")
app.add_typer(dlq_app, name="dlq")


def default_nats() -> str:
    """--nats default: $WALLAROO_NATS, else a running `wallaroo dev` here, else localhost."""
    env = os.environ.get("WALLAROO_NATS")
    if env:
        return env
    if DEV_URL_FILE.is_file():
        return DEV_URL_FILE.read_text().strip()
    return DEFAULT_NATS


NatsOpt = Annotated[str | None, typer.Option("--nats", help="NATS URL (default: $WALLAROO_NATS, "
                                             "the running dev cluster, or nats://127.0.0.1:4222)")]
AppFile = Annotated[Path, typer.Argument(metavar="APP.py", help="the app's .py file", exists=True,
                                         dir_okay=False)]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command body; a WallarooError becomes a one-line error and exit code 1."""
    try:
        return asyncio.run(coro)
    except WallarooError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None


async def _connect(url: str | None) -> Nats:
    return await Nats.connect(url or default_nats(), name="wallaroo-cli", persistent=False)


@app.command()
def dev(
    app_file: AppFile,
    input: Annotated[Path | None, typer.Option("--input", "-i", exists=True, dir_okay=False,
                     help="send this file's non-empty lines, print all output, then exit")] = None,
    runners: Annotated[int, typer.Option(min=1, max=64, help="runner processes")] = 1,
    source: Annotated[str | None, typer.Option(help="source to feed (if the app has several)")] = None,
    state_dir: Annotated[Path, typer.Option(help="nats-server data and logs")] = Path(".wallaroo/dev"),
    timeout: Annotated[float, typer.Option(help="give up waiting for output after N s")] = 600.0,
) -> None:
    """Run APP on a local cluster (embedded nats-server + runners), printing every output."""
    from wallaroo.devrun import run_dev

    try:
        code = run_dev(app_file, input, runners, source, state_dir, timeout)
    except WallarooError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def deploy(app_file: AppFile, nats: NatsOpt = None) -> None:
    """Package APP (cloudpickle + manifest) and ship it to the runners through NATS."""

    async def body() -> None:
        nc = await _connect(nats)
        try:
            m = await ops.deploy(nc, app_file)
        finally:
            await nc.close()
        typer.echo(f"deployed {m.name} version {m.version} ({len(m.stages)} stages, "
                   f"{sum(s.partitions for s in m.stages)} partitions)")

    run(body())


@app.command()
def send(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    source: Annotated[str, typer.Argument(help="source name")],
    values: Annotated[list[str] | None, typer.Argument(help="records to send")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", exists=True, dir_okay=False,
                    help="send each non-empty line of this file")] = None,
    producer: Annotated[str | None, typer.Option(help="producer id for dedup (default: "
                        "the file's content hash, or a fresh id)")] = None,
    nats: NatsOpt = None,
) -> None:
    """Send records to a deployed app's source (exactly once per producer id)."""
    if (file is None) == (not values):
        msg = "give either --file F or VALUE... (not both, not neither)"
        raise typer.BadParameter(msg)

    async def body() -> None:
        nc = await _connect(nats)
        try:
            manifest = await ops.manifest_of(nc, app_name)
            if file is not None:
                records = ops.file_lines(file)
                pid = producer or ops.file_producer_id(file)
            else:
                records = iter([v.encode() for v in values or []])
                pid = producer or ops.fresh_producer_id()
            count = await ops.send(nc, manifest, source, records, pid)
        finally:
            await nc.close()
        typer.echo(f"sent {count} records to {manifest.name}/{source}", err=True)

    run(body())


@app.command()
def tail(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    sink: Annotated[str | None, typer.Argument(help="sink name [default: all sinks]")] = None,
    count: Annotated[int | None, typer.Option(help="stop after N outputs")] = None,
    nats: NatsOpt = None,
) -> None:
    """Print a deployed app's outputs, from the first, following new ones."""

    async def body() -> None:
        nc = await _connect(nats)
        try:
            manifest = await ops.manifest_of(nc, app_name)
            seen = 0
            async for _, _, outs in ops.tail(nc, manifest, sink):
                for out in outs:
                    typer.echo(out.decode("utf-8", "replace").removesuffix("\n"))
                    seen += 1
                    if count is not None and seen >= count:
                        return
        finally:
            await nc.close()

    run(body())


@app.command()
def status(nats: NatsOpt = None) -> None:
    """Apps and stages, each partition's owner, committed seq, lag and rate, and the runners."""
    from wallaroo import status as st

    async def body() -> st.Status:
        nc = await _connect(nats)
        try:
            return await st.gather(nc)
        finally:
            await nc.close()

    s = run(body())
    _table(st.APP_COLUMNS, s.apps, "no apps deployed")
    _table(st.PARTITION_COLUMNS, s.partitions, "no partitions")
    _table(st.RUNNER_COLUMNS, s.runners, "no runners")
    if s.problems:
        _table(st.PROBLEM_COLUMNS, s.problems, "")


def _table(columns: list[str], rows: list[list[str]], empty: str) -> None:
    typer.echo(render_table(columns, rows) if rows else empty)
    typer.echo("")


@app.command()
def runner(
    nats: NatsOpt = None,
    runner_id: Annotated[str | None, typer.Option("--id", help="runner id (default: "
                         "host-pid-random)")] = None,
    member_ttl: Annotated[float, typer.Option(min=0.5, help="seconds of silence after which "
                          "a runner is declared gone")] = 3.0,
) -> None:
    """Run a long-lived runner: join the cluster, run the partitions assigned to it."""
    from wallaroo_runtime.runner import main as runner_main

    runner_main(nats or default_nats(), runner_id, member_ttl)


@dlq_app.command("list")
def dlq_list(
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    limit: Annotated[int, typer.Option(min=1)] = 100,
    tracebacks: Annotated[bool, typer.Option("--tracebacks", help="show full tracebacks")] = False,
    nats: NatsOpt = None,
) -> None:
    """List dead letters: records that failed in decoding or user code after retries."""

    async def body() -> None:
        nc = await _connect(nats)
        try:
            manifest = await ops.manifest_of(nc, app_name)
            letters = await ops.dead_letters(nc, manifest, limit)
        finally:
            await nc.close()
        if not letters:
            typer.echo(f"no dead letters for {manifest.name}")
            return
        rows = [[str(d["seq"]), d["step"], d["reason"], str(d["attempts"]), d["key"] or "",
                 _preview(d["payload"]), d["error"]] for d in letters]
        typer.echo(render_table(["seq", "step", "reason", "attempts", "key", "record", "error"], rows))
        if tracebacks:
            for d in letters:
                typer.echo(f"\n--- dead letter {d['seq']} ---\n{d['traceback']}")

    run(body())


def _preview(payload: bytes, width: int = 40) -> str:
    text = payload.decode("utf-8", "replace")
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    app(prog_name="wallaroo")


if __name__ == "__main__":
    main()
