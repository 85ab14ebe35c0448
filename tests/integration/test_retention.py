"""Bounded storage and memory on a real nats-server: a deploy sets the app's retention limits
on its output and dead-letter streams (a redeploy changes them), JetStream drops the oldest
outputs past them, a sink that starts behind what was dropped says so and delivers what is
left; the embedded server runs with a soft memory limit."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path

import pytest
from connector_support import async_, eventually, publish_outputs

from wallaroo.connectors import FileSink
from wallaroo.control import apps
from wallaroo.core.names import AppNames
from wallaroo.local.natsserver import MEMORY_LIMIT, NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime.connectors import run_sink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
APP = """\
import wallaroo as wl

@wl.computation(name="upper")
def upper(data: bytes) -> str:
    return data.decode().upper()

pipeline = wl.source("in", wl.StreamSource()).to(upper).to_sink(wl.StreamSink("out"))
app = wl.build_application("kept", pipeline, retention={retention})
"""


def app_file(folder: Path, retention: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kept.py"
    path.write_text(APP.format(retention=retention))
    return path


async def limits(nats: Nats, stream: str) -> tuple[float, int]:
    cfg = (await nats.js.stream_info(stream)).config
    return cfg.max_age or 0.0, cfg.max_bytes if cfg.max_bytes is not None else -1


def test_a_deploy_sets_the_apps_retention_and_a_redeploy_changes_it(
        nats_server: NatsServer, tmp_path: Path) -> None:
    names = AppNames("kept")

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await apps.deploy(nats, app_file(tmp_path / "v1", "None"))
            day = 86_400.0
            assert await limits(nats, names.out_stream) == (7 * day, 1 << 30)  # the defaults
            assert await limits(nats, names.dlq_stream) == (30 * day, 1 << 30)
            assert await limits(nats, names.log_stream) == (0.0, -1)  # state is never dropped
            assert await limits(nats, names.data_stream) == (0.0, -1)
            await apps.deploy(nats, app_file(tmp_path / "v2", textwrap.dedent("""\
                wl.Retention(output_max_age=3600, output_max_bytes=65536,
                             dead_letter_max_age=None, dead_letter_max_bytes=None)""")))
            assert await limits(nats, names.out_stream) == (3600.0, 65536)
            assert await limits(nats, names.dlq_stream) == (0.0, -1)
            info = await nats.js.stream_info(names.out_stream)
            assert info.config.retention == "limits"  # not a work queue: sinks read it
        finally:
            await nats.close()

    asyncio.run(body())


def test_outputs_past_the_limit_are_dropped_oldest_first_and_a_late_sink_says_so(
        nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names, out = AppNames("kept"), tmp_path / "delivered.txt"

    async def body() -> tuple[int, int]:
        nats = await Nats.connect(nats_server.url)
        try:
            await apps.deploy(nats, app_file(tmp_path / "app", "wl.Retention(output_max_bytes=32768)"))
            batches = [[f"{n:04d} {'x' * 1000}"] for n in range(200)]  # about 200 KiB in all
            await publish_outputs(nats, "kept", "out", batches)
            info = await nats.js.stream_info(names.out_stream)
            assert info.state.bytes <= 32768 and info.state.last_seq == 200
            first = info.state.first_seq
            assert first > 1
            stop = asyncio.Event()
            task = asyncio.create_task(run_sink(nats, "kept", "out", FileSink("out", str(out)), stop))
            await eventually(async_(lambda: out.exists() and out.read_text().count("\n") == 201 - first),
                             "the kept outputs delivered")
            stop.set()
            await asyncio.wait_for(task, 5)
            return first, info.state.messages
        finally:
            await nats.close()

    with caplog.at_level(logging.ERROR):
        first, kept = asyncio.run(body())
    delivered = [line.split()[0] for line in out.read_text().splitlines()]
    assert delivered == [f"{n:04d}" for n in range(first - 1, 200)] and len(delivered) == kept
    assert f"outputs from seq 1 to {first - 1} were dropped" in caplog.text
    assert "wallaroo.Retention(output_max_age" in caplog.text


def test_the_embedded_nats_server_runs_with_a_soft_memory_limit(
        nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Go's GOMEMLIMIT keeps a busy JetStream's heap from doubling with the volume; a limit
    of the user's own wins."""
    assert nats_server.proc is not None
    assert f"GOMEMLIMIT={MEMORY_LIMIT}".encode() in environ(nats_server.proc.pid)
    monkeypatch.setenv("GOMEMLIMIT", "1GiB")
    with NatsServer(tmp_path / "own") as own:
        assert own.proc is not None and b"GOMEMLIMIT=1GiB" in environ(own.proc.pid)


def environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
