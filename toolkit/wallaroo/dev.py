"""The local dev cluster: an embedded nats-server, runner subprocesses, and the app on it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from wallaroo.errors import WallarooError
from wallaroo.natsserver import NatsServer

RUNNER_STOP_TIMEOUT = 15.0


def runner_command(url: str, index: int, count: int) -> list[str]:
    return [sys.executable, "-m", "wallaroo", "runner", "--nats", url,
            "--index", str(index), "--count", str(count)]


class RunnerProcess:
    """A `wallaroo runner` subprocess; its log goes to a file."""

    def __init__(self, url: str, index: int, count: int, log_dir: Path) -> None:
        self.url, self.index, self.count, self.log_dir = url, index, count, log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RunnerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"runner-{self.index}.log", "ab") as log:
            self.proc = subprocess.Popen(
                runner_command(self.url, self.index, self.count), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ.copy(),
                process_group=0,  # Ctrl-C reaches `wallaroo dev`, which stops runners in order
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything (what the chaos tests use)."""
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM: the runner finishes the batches in hand, then exits."""
        if self.proc is None or not self.alive:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=RUNNER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()


class DevCluster:
    """nats-server + `runners` runner processes, all stopped on exit."""

    def __init__(self, state_dir: Path, runners: int = 1, fresh: bool = True) -> None:
        if fresh and state_dir.exists():
            shutil.rmtree(state_dir)
        self.state_dir = state_dir
        self.server = NatsServer(state_dir / "nats")
        self.runners = [RunnerProcess(self.server.url, i, runners, state_dir / "logs")
                        for i in range(runners)]

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> DevCluster:
        self.server.start()
        for r in self.runners:
            r.start()
        return self

    def restart_runner(self, index: int, *, kill: bool = True) -> RunnerProcess:
        """Kill (SIGKILL) or stop runner `index` and start a new process in its place."""
        old = self.runners[index]
        old.kill() if kill else old.stop()
        self.runners[index] = RunnerProcess(old.url, index, old.count, old.log_dir).start()
        return self.runners[index]

    def check_runners(self) -> None:
        for r in self.runners:
            if not r.alive and r.proc is not None:
                log = self.state_dir / "logs" / f"runner-{r.index}.log"
                msg = f"runner {r.index} exited with code {r.proc.returncode}; see {log}"
                raise WallarooError(msg)

    def stop(self) -> None:
        started = time.monotonic()
        for r in self.runners:
            r.stop()
        self.server.stop()
        self.stopped_in = time.monotonic() - started

    def __enter__(self) -> DevCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
