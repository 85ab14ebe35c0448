"""A runner stopped (SIGTERM) while its NATS server is gone still exits cleanly, in bounded
time, without a traceback: what systemd does to a runner on a VM whose NATS is unreachable."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from wallaroo.core.names import MEMBERS_BUCKET
from wallaroo.local.auth import dev_auth
from wallaroo.local.dev import DevKeys, RunnerProcess
from wallaroo.local.natsserver import NatsServer, free_port
from wallaroo.nats import Nats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def joined(url: str, runner_id: str, timeout: float = 30.0) -> None:
    nats = await Nats.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while runner_id not in await nats.kv_keys(MEMBERS_BUCKET):
            assert time.monotonic() < deadline, f"{runner_id} did not join within {timeout}s"
            await asyncio.sleep(0.05)
    finally:
        await nats.close()


def test_a_runner_stopped_while_nats_is_gone_exits_cleanly(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", auth=dev_auth(tmp_path)).start()
    keys = DevKeys.ensure(tmp_path / "keys").runner_args()  # a runner with no trusted key never starts
    runner = RunnerProcess(server.url, "r0", tmp_path / "logs", member_ttl=1.0, extra=keys).start()
    try:
        asyncio.run(joined(server.url, "r0"))
        server.stop()
        assert runner.proc is not None
        runner.proc.terminate()
        code = runner.proc.wait(timeout=60)
    finally:
        runner.kill()
        server.stop()
    log = runner.log_file.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_a_runner_that_never_reached_nats_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    keys = DevKeys.ensure(tmp_path / "keys").runner_args()
    dead = f"nats://127.0.0.1:{free_port()}"  # nothing listens there: its connect retries forever
    runner = RunnerProcess(dead, "r0", tmp_path / "logs", extra=keys).start()
    try:
        deadline = time.monotonic() + 30
        while "Connect call failed" not in runner.log_file.read_text():  # it is retrying
            assert time.monotonic() < deadline, runner.log_file.read_text()[-2000:]
            time.sleep(0.05)
        assert runner.proc is not None
        runner.proc.terminate()
        runner.proc.wait(timeout=10)  # it used to ignore SIGTERM here for good
    finally:
        runner.kill()
