"""The local cluster: an embedded nats-server and a pool of runner subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from wallaroo.errors import WallarooError
from wallaroo.natsserver import NatsServer, Service

RUNNER_STOP_TIMEOUT = 15.0
DEFAULT_MEMBER_TTL = 3.0


def runner_command(url: str, runner_id: str, member_ttl: float, state_store: str | None,
                   extra: Sequence[str] = ()) -> list[str]:
    store = ["--state-store", state_store] if state_store else []
    return [sys.executable, "-m", "wallaroo", "runner", "--nats", url, "--id", runner_id,
            "--member-ttl", str(member_ttl), *store, *extra]


class RunnerProcess:
    """A `wallaroo runner` subprocess; its log goes to `log_dir/<id>.log`."""

    def __init__(self, url: str, runner_id: str, log_dir: Path,
                 member_ttl: float = DEFAULT_MEMBER_TTL, state_store: str | None = None,
                 extra: Sequence[str] = ()) -> None:
        self.url, self.runner_id, self.log_dir, self.member_ttl = url, runner_id, log_dir, member_ttl
        self.state_store, self.extra = state_store, tuple(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.runner_id}.log"

    def start(self) -> RunnerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                runner_command(self.url, self.runner_id, self.member_ttl, self.state_store,
                               self.extra), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ.copy(),
                process_group=0,  # Ctrl-C reaches `wallaroo dev`, which stops runners in order
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything (what the chaos tests use)."""
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM: the runner finishes the batches in hand, releases its partitions, exits."""
        if self.proc is None or not self.alive:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused runner could not act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=RUNNER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()


class RunnerPool:
    """Runner subprocesses r0, r1, ... on one NATS URL: what the local autoscaler backend and
    `wallaroo scale` act on."""

    def __init__(self, url: str, log_dir: Path, member_ttl: float = DEFAULT_MEMBER_TTL,
                 state_store: str | None = None, extra: Sequence[str] = ()) -> None:
        self.url, self.log_dir, self.member_ttl = url, log_dir, member_ttl
        self.state_store, self.extra = state_store, tuple(extra)
        self.runners: list[RunnerProcess] = []
        self._next_id = 0

    def add_runner(self) -> RunnerProcess:
        runner = self._spawn()
        self.runners.append(runner)
        return runner

    def _spawn(self) -> RunnerProcess:
        runner = RunnerProcess(self.url, f"r{self._next_id}", self.log_dir, self.member_ttl,
                               self.state_store, self.extra).start()
        self._next_id += 1
        return runner

    def scale_to(self, n: int) -> None:
        """Start runners, or gracefully stop the newest ones, until `n` run."""
        while len(self.runners) < n:
            self.add_runner()
        leaving = self.runners[n:]
        del self.runners[n:]
        for r in leaving:  # all at once: they finish their batches in parallel
            r.signal(signal.SIGCONT)  # a paused runner could not act on SIGTERM
            r.signal(signal.SIGTERM)
        for r in leaving:
            r.stop()

    def restart_runner(self, index: int, *, kill: bool = True) -> RunnerProcess:
        """Kill (SIGKILL) or stop runner `index`; a new runner (new id) takes its place."""
        old = self.runners[index]
        old.kill() if kill else old.stop()
        self.runners[index] = self._spawn()
        return self.runners[index]

    def check(self) -> None:
        for r in self.runners:
            if not r.alive and r.proc is not None:
                msg = f"runner {r.runner_id} exited with code {r.proc.returncode}; see {r.log_file}"
                raise WallarooError(msg)

    def stop(self) -> None:
        self.scale_to(0)


class DevCluster(Service):
    """nats-server + a pool of runner processes, all stopped on exit."""

    def __init__(self, state_dir: Path, runners: int = 1, fresh: bool = True,
                 member_ttl: float = DEFAULT_MEMBER_TTL, state_store: str | None = None,
                 runner_args: Sequence[str] = ()) -> None:
        """Snapshots go to `state_store` (default: file://STATE_DIR/state)."""
        if fresh and state_dir.exists():
            shutil.rmtree(state_dir)
        self.state_dir = state_dir
        self.server = NatsServer(state_dir / "nats")
        store = state_store or f"file://{(state_dir / 'state').resolve()}"
        self.pool = RunnerPool(self.server.url, state_dir / "logs", member_ttl, store, runner_args)
        self.initial = runners

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def runners(self) -> list[RunnerProcess]:
        return self.pool.runners

    def start(self) -> DevCluster:
        self.server.start()
        self.pool.scale_to(self.initial)
        return self

    def scale_to(self, n: int) -> None:
        self.pool.scale_to(n)

    def restart_runner(self, index: int, *, kill: bool = True) -> RunnerProcess:
        return self.pool.restart_runner(index, kill=kill)

    def check_runners(self) -> None:
        self.pool.check()

    def stop(self) -> None:
        self.pool.stop()
        self.server.stop()

