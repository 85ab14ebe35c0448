"""`wallaroo dev` keeps its cluster running: a runner that crashes is started again (same id,
same log), one that crashes again and again soon after each start ends dev naming its log, and
a nats-server that exits ends dev (everything lives in its JetStream store: nothing can go on).

Children are watched through SIGCHLD, not by polling: the kernel says when one exits, and the
supervisor then looks at every child it knows (signals of several exits may merge into one)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from wallaroo.core.aio import sleep_or_stop
from wallaroo.core.errors import WallarooError
from wallaroo.core.names import REPLACE_EXIT
from wallaroo.local.dev import DevCluster, RunnerProcess

QUICK = 10.0  # seconds: a runner that dies sooner after its start failed "quickly"
MAX_QUICK_FAILURES = 5  # quick failures in a row that end dev
BACKOFF = 0.5  # seconds before restarting after a quick failure, doubled for each in a row


class Supervisor:
    """Watches a DevCluster's nats-server and runners until stopped; `run` raises
    WallarooError (one line, naming the log) when dev cannot go on."""

    def __init__(self, cluster: DevCluster, say: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster, self.say, self.clock = cluster, say, clock
        self.quick: dict[str, int] = {}  # runner id -> quick failures in a row

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        loop.add_signal_handler(signal.SIGCHLD, exited.set)
        try:
            while not stop.is_set():
                exited.clear()  # before looking: an exit while we look wakes the next round
                await self.tend(stop)
                await _first(exited, stop)
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)

    async def tend(self, stop: asyncio.Event) -> None:
        """Fail if nats-server is gone; restart every runner that died."""
        self.check_server()
        for runner in list(self.cluster.pool.runners):
            if runner.proc is not None and not runner.alive and not stop.is_set():
                await self.restart(runner, stop)
                self.check_server()

    def check_server(self) -> None:
        server = self.cluster.server
        if server.proc is not None and not server.alive:
            msg = (f"nats-server exited ({exit_text(server.proc.returncode)}); "
                   f"see {server.log_file}")
            raise WallarooError(msg)

    async def restart(self, runner: RunnerProcess, stop: asyncio.Event) -> None:
        assert runner.proc is not None
        code = runner.proc.returncode
        if code == REPLACE_EXIT:  # it asked for it (a call cancelled with terminate=True)
            self.cluster.pool.replace(runner)
            return
        failures = self.count_failure(runner)
        if failures >= MAX_QUICK_FAILURES:
            msg = (f"runner {runner.runner_id} crashed {failures} times in a row, each within "
                   f"{QUICK:g}s of its start ({exit_text(code)}); see {runner.log_file}")
            raise WallarooError(msg)
        if failures:
            await sleep_or_stop(stop, BACKOFF * 2 ** (failures - 1))
            if stop.is_set():
                return
        if self.cluster.pool.replace(runner) is not None:
            self.say(f"runner {runner.runner_id} crashed ({exit_text(code)}); restarted it, "
                     f"its log: {runner.log_file}")

    def count_failure(self, runner: RunnerProcess) -> int:
        """Quick failures of this runner in a row, this one included (0: it ran a while)."""
        quick = self.clock() - runner.started_at < QUICK
        self.quick[runner.runner_id] = self.quick.get(runner.runner_id, 0) + 1 if quick else 0
        return self.quick[runner.runner_id]


def exit_text(code: int | None) -> str:
    """"code 3", or "killed by SIGKILL" for a process a signal ended."""
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"code {code}"


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
