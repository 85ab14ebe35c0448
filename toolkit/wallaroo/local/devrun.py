"""`wallaroo dev`: deploy an app on a fresh local cluster, feed it, print its outputs."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wallaroo.control import apps, dlq, ingest, outputs
from wallaroo.control.status import wait_rollout
from wallaroo.core.errors import WallarooError
from wallaroo.core.names import AppNames
from wallaroo.core.packaging import load_app
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster, ServiceProcess, autoscaler_command, follow_wishes
from wallaroo.local.natsserver import listening
from wallaroo.nats import Nats
from wallaroo.plan import Stage

INTERRUPTED = 130  # exit code of a `dev --input` stopped by Ctrl-C/SIGTERM before its end


def run_dev(app_file: Path, input_file: Path | None, runners: int, source: str | None,
            state_dir: Path, timeout: float, autoscale: Sequence[str] | None = None,
            tls: bool = False) -> int:
    """`autoscale`: arguments for a `wallaroo autoscaler --backend local` process, which then
    sizes the runner pool; None: the pool keeps `runners` (or what `wallaroo scale` asks).
    `tls`: nats-server speaks TLS only, with a CA made under STATE_DIR/tls (see DevCluster)."""
    app, _ = load_app(app_file)  # fail on a broken app before starting anything
    if input_file is not None and source is None and len(app.sources) != 1:
        msg = f"{app.name} has several sources ({', '.join(app.sources)}): pass --source NAME"
        raise WallarooError(msg)
    if input_file is not None:
        _check_input(app.sources.get(source or next(iter(app.sources), "")), input_file)
    _refuse_a_second_dev(state_dir)
    cluster = DevCluster(state_dir, runners, tls=tls)
    with cluster:
        url_file = state_dir / "url"
        url_file.write_text(cluster.url)
        info(f"nats-server at {cluster.url}, {runners} runner(s), logs in {state_dir / 'logs'}")
        try:
            code = asyncio.run(_session(cluster, app_file, input_file, source, timeout,
                                        autoscale))
        finally:
            url_file.unlink(missing_ok=True)
            info("stopping runners and nats-server")
    return 0 if input_file is None else INTERRUPTED if code is None else code


def _check_input(stage: Stage | None, input_file: Path) -> None:
    """A binary input cut inside a frame of the source's decoder fails before a cluster
    starts (file_records reads the frame headers first)."""
    if stage is not None and stage.decoder is not None:
        ingest.file_records(input_file, stage.decoder.framing)


def _refuse_a_second_dev(state_dir: Path) -> None:
    """A dev starts afresh in its folder: one still running there would lose its JetStream
    store and state under it. A url file whose server is gone (a dev killed) is stale."""
    url_file = state_dir / "url"
    if not url_file.is_file():
        return
    url = url_file.read_text().strip()
    port = urlsplit(url).port
    if port is not None and listening(port):
        msg = (f"a wallaroo dev is already running in {state_dir} (nats-server at {url}): stop it "
               "(Ctrl-C in its terminal), or give this one another --state-dir")
        raise WallarooError(msg)


async def _session(cluster: DevCluster, app_file: Path, input_file: Path | None,
                   source: str | None, timeout: float, autoscale: Sequence[str] | None
                   ) -> int | None:
    """The exit code once all input is processed and printed (1 if records were
    dead-lettered); None if interrupted (Ctrl-C/SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nats = await Nats.connect(cluster.url, name="wallaroo-dev", creds=cluster.creds("deployer"),
                              tls_ca=cluster.tls_ca)
    printer: _Printer | None = None
    sizer: asyncio.Task[None] | None = None
    try:
        manifest = await apps.deploy(nats, app_file, key=cluster.deploy_key)
        rollout = await wait_rollout(nats, manifest, timeout=60)
        if not rollout.ok:
            raise WallarooError("; ".join(rollout.problems()))
        info(f"deployed {manifest.name} version {manifest.version}")
        printer = _Printer(nats, manifest)
        sizer = asyncio.create_task(_size_pool(nats, cluster, autoscale, stop))
        if input_file is None:
            await _until(stop, cluster, _forever())
            return None
        return await _until(stop, cluster, _feed(nats, cluster, manifest, printer, input_file,
                                                 source, timeout))
    finally:
        stop.set()
        if sizer is not None:
            await sizer
        if printer is not None:
            await printer.stop()
        await nats.close()


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


async def _until(stop: asyncio.Event, cluster: DevCluster, work: Coroutine[Any, Any, int | None]
                 ) -> int | None:
    """Run `work` until it ends or `stop` is set (then None), failing fast if a runner dies."""
    task = asyncio.create_task(work)
    while not task.done() and not stop.is_set():
        cluster.check_runners()
        await asyncio.wait([task], timeout=0.2)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def _feed(nats: Nats, cluster: DevCluster, manifest: Manifest, printer: _Printer,
                input_file: Path, source: str | None, timeout: float) -> int:
    records = ingest.file_records(input_file, ingest.source_framing(manifest, source))
    sent = await ingest.send(nats, manifest, source, records, ingest.file_producer_id(input_file))
    info(f"sent {sent.records} records from {input_file}")
    await _finish(nats, cluster, manifest, printer, timeout)
    dead = await dlq.count(nats, manifest)
    info(f"done: {printer.count} outputs, {dead} dead letter(s)")
    if not dead:
        return 0
    # Shown here: the cluster stops when dev returns, and `dlq list` with it.
    info(f"the first dead letters (`wallaroo dlq list {manifest.slug}` while a dev runs):")
    for line in await dlq.first_lines(nats, manifest):
        info(line)
    return 1


async def _finish(nats: Nats, cluster: DevCluster, manifest: Manifest, printer: _Printer,
                  timeout: float) -> None:
    """Wait until every input is processed and every output printed."""
    idle = asyncio.create_task(apps.wait_idle(nats, manifest, timeout))
    while not idle.done():
        cluster.check_runners()
        await asyncio.sleep(0.1)
    await idle
    target = await nats.stream_last_seq(AppNames(manifest.slug).out_stream)
    while printer.last_seq < target:
        if printer.task.done():
            printer.task.result()  # the printer died (say, stdout closed): say why
            msg = "the output printer stopped before printing every output"
            raise WallarooError(msg)
        await asyncio.sleep(0.02)


class _Printer:
    """Prints every output as it arrives, in a background task."""

    def __init__(self, nats: Nats, manifest: Manifest) -> None:
        self.nats, self.manifest = nats, manifest
        self.last_seq = 0
        self.count = 0
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def run(self) -> None:
        named = len(self.manifest.sinks) > 1
        out = sys.stdout.buffer
        async for seq, sink, outs in outputs.tail(self.nats, self.manifest, None):
            out.write(_lines(outs, f"{sink}: ".encode() if named else b""))
            out.flush()
            self.count += len(outs)
            self.last_seq = seq


def _lines(outs: list[bytes], prefix: bytes) -> bytes:
    """One output per line (an encoder's own newline is not doubled), as bytes in one write:
    why not a decode and a write per output: at 100k outputs/s that took a core."""
    ended = [o if o.endswith(b"\n") else o + b"\n" for o in outs]
    return b"".join(prefix + o for o in ended) if prefix else b"".join(ended)


def info(text: str) -> None:
    """A line for the person at the terminal: on stderr, stdout keeps the outputs."""
    sys.stderr.write(f"wallaroo: {text}\n")
    sys.stderr.flush()
