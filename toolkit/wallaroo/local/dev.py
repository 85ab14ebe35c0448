"""The local cluster: an embedded nats-server, a pool of runner subprocesses sized by the
control bucket, and the autoscaler process that may write it. Signed like a real one: it makes
a deploy key pair and a state key under its state dir, and its runners trust only that key
(and the deployer's own, $WALLAROO_DEPLOY_KEY, when set)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from wallaroo.core.errors import WallarooError
from wallaroo.core.keys import (
    DEPLOY_KEY_ENV,
    generate_pair,
    generate_state_key,
    load_signing_key,
    write_public_key,
)
from wallaroo.core.names import REPLACE_EXIT
from wallaroo.local.auth import dev_auth
from wallaroo.local.children import die_with_parent
from wallaroo.local.natsserver import NatsServer, Service

if TYPE_CHECKING:  # the NATS client (0.1 s) is imported after nats-server starts, not before
    import asyncio

    from wallaroo.nats import Nats

STOP_TIMEOUT = 15.0
WISH_POLL = 0.2  # seconds between reads of the runner count asked for
DEFAULT_MEMBER_TTL = 3.0


def runner_command(url: str, runner_id: str, member_ttl: float, state_store: str | None,
                   extra: Sequence[str] = ()) -> list[str]:
    store = ["--state-store", state_store] if state_store else []
    return [sys.executable, "-m", "wallaroo", "runner", "--nats", url, "--id", runner_id,
            "--member-ttl", str(member_ttl), *store, *extra]


def autoscaler_command(url: str, extra: Sequence[str] = ()) -> list[str]:
    """`wallaroo autoscaler` sizing a local pool through the control bucket."""
    return [sys.executable, "-m", "wallaroo", "autoscaler", "--backend", "local", "--nats", url,
            *extra]


@dataclass(frozen=True)
class DevKeys:
    """A local cluster's keys, kept in one folder (`.wallaroo/dev/keys/` for `wallaroo dev`,
    where `wallaroo deploy` run in the same folder finds the private key)."""

    deploy_key: Path  # the private key the cluster's own deploys are signed with
    trusted: tuple[Path, ...]  # public keys its runners trust
    state_key: Path

    @classmethod
    def ensure(cls, folder: Path) -> DevKeys:
        """The keys in `folder`, made where missing."""
        private, public = folder / "deploy.key", folder / "deploy.pub"
        if not private.is_file():
            generate_pair(folder)
        state = folder / "state.key"
        if not state.is_file():
            generate_state_key(state)
        return cls(private, (public, *_deployers_key(folder)), state)

    def runner_args(self) -> list[str]:
        trust = [arg for path in self.trusted for arg in ("--trust", str(path))]
        return [*trust, "--state-key", str(self.state_key)]


def _deployers_key(folder: Path) -> list[Path]:
    """The public half of $WALLAROO_DEPLOY_KEY, if set: so the user's own `wallaroo deploy`
    (which signs with it) runs on the local cluster too."""
    env = os.environ.get(DEPLOY_KEY_ENV)
    if not env:
        return []
    return [write_public_key(folder / "deployer.pub", load_signing_key(Path(env)).public)]


class ServiceProcess:
    """A `wallaroo` subprocess (runner, autoscaler); its log goes to `log_dir/<name>.log`."""

    def __init__(self, name: str, command: Sequence[str], log_dir: Path) -> None:
        self.name, self.command, self.log_dir = name, list(command), log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() at start: how soon a crash came

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> Self:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Runners hold public keys only, local ones too: the private key stays here.
                env={k: v for k, v in os.environ.items() if k != DEPLOY_KEY_ENV},
                process_group=0,  # Ctrl-C reaches `wallaroo dev`, which stops them in order
                preexec_fn=die_with_parent(),  # dies with us (see children.py)
            )
        self.started_at = time.monotonic()
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
        """SIGTERM: the process finishes its work in hand and exits."""
        if self.proc is None or not self.alive:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused process could not act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()


class RunnerProcess(ServiceProcess):
    """A `wallaroo runner` subprocess: it finishes its batches and releases its partitions on
    SIGTERM."""

    def __init__(self, url: str, runner_id: str, log_dir: Path,
                 member_ttl: float = DEFAULT_MEMBER_TTL, state_store: str | None = None,
                 extra: Sequence[str] = ()) -> None:
        super().__init__(runner_id, runner_command(url, runner_id, member_ttl, state_store, extra),
                         log_dir)
        self.url, self.runner_id = url, runner_id


async def follow_wishes(nats: Nats, pool: RunnerPool, stop: asyncio.Event,
                        on_change: Callable[[int], None] = lambda n: None) -> None:
    """Until `stop`: start or stop runners of `pool` whenever the runner count asked for in
    the control bucket (`wallaroo scale`, the autoscaler's local backend) differs from it."""
    # Imported here: `wallaroo dev` imports this module before its nats-server starts, and
    # asyncio and the wire types (0.03 s) can come after.
    import asyncio

    from wallaroo.control.scale import requested_runners
    from wallaroo.core.aio import sleep_or_stop

    while not stop.is_set():
        wanted = await requested_runners(nats)
        if wanted is not None and wanted != len(pool.runners):
            on_change(wanted)
            await asyncio.to_thread(pool.scale_to, wanted)
        await sleep_or_stop(stop, WISH_POLL)


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
        """Replace runners that exited asking for it; fail on any other exit."""
        for r in list(self.runners):
            if r.alive or r.proc is None:
                continue
            if r.proc.returncode == REPLACE_EXIT:
                self.replace(r)
                continue
            msg = f"runner {r.name} exited with code {r.proc.returncode}; see {r.log_file}"
            raise WallarooError(msg)

    def replace(self, old: RunnerProcess) -> RunnerProcess | None:
        """Start a runner with `old`'s id (and log file) in its place; None if `old` left the
        pool meanwhile (scaled away). The same id: the partitions the cluster gave `old` go
        straight to its successor, which restores them from their changelogs."""
        for i, r in enumerate(self.runners):
            if r is old:
                self.runners[i] = RunnerProcess(self.url, old.runner_id, self.log_dir,
                                                self.member_ttl, self.state_store,
                                                self.extra).start()
                return self.runners[i]
        return None

    def stop(self) -> None:
        self.scale_to(0)


class StateDirBusyError(WallarooError):
    def __init__(self, state_dir: Path, holder: str) -> None:
        self.state_dir, self.holder = state_dir, holder
        who = f"pid {holder}" if holder.isdigit() else "another process"
        stop = f"Ctrl-C in its terminal, or `kill {holder}`" if holder.isdigit() else "stop it"
        super().__init__(f"a wallaroo dev or run ({who}) is already using {state_dir}: stop it "
                         f"({stop}), or give this one another --state-dir")


class StateDirLock:
    """One cluster per state folder: two nats-servers on one JetStream store corrupt it, and
    a fresh start would delete a running cluster's store. An exclusive flock on
    STATE_DIR.lock (beside the folder, which a fresh start deletes) holding the owner's pid;
    the kernel drops it when its holder dies, SIGKILL included, so it is never stale."""

    def __init__(self, state_dir: Path) -> None:
        path = state_dir.with_name(state_dir.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip()
            self.release()
            raise StateDirBusyError(state_dir, holder) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = None


class DevCluster(Service):
    """nats-server + a pool of runner processes, all stopped on exit."""

    def __init__(self, state_dir: Path, runners: int = 1, fresh: bool = True,
                 member_ttl: float = DEFAULT_MEMBER_TTL, state_store: str | None = None,
                 runner_args: Sequence[str] = (), tls: bool = False) -> None:
        """Snapshots go to `state_store` (default: file://STATE_DIR/state); keys are in
        STATE_DIR/keys. `tls`: the client port speaks TLS only, with a certificate of a CA
        made here (STATE_DIR/tls/ca.pem). StateDirBusyError while another cluster uses
        STATE_DIR."""
        self.lock = StateDirLock(state_dir)  # before anything in the folder is touched
        if fresh and state_dir.exists():
            shutil.rmtree(state_dir)
        self.state_dir = state_dir
        self.auth = dev_auth(state_dir)  # authentication is on: one key per role
        # Absolute, like the store URL: what runners trust must not hang on their working dir.
        self.keys = DevKeys.ensure((state_dir / "keys").resolve())
        if tls:  # imported here: cryptography's x509 was 0.03 s of every dev's start
            from wallaroo.local.tls import dev_tls

        self.tls = dev_tls(state_dir) if tls else None
        self.server = NatsServer(state_dir / "nats", auth=self.auth, tls=self.tls)
        store = state_store or f"file://{(state_dir / 'state').resolve()}"
        self.pool = RunnerPool(self.server.url, state_dir / "logs", member_ttl, store,
                               [*self.keys.runner_args(), *runner_args,
                                "--creds", str(self.auth.seed("runner")), *self.tls_args()])
        self.initial = runners

    @property
    def url(self) -> str:
        return self.server.url

    def creds(self, role: str) -> Path:
        """The nkey seed file of `role` (runner, deployer, client) for this cluster."""
        return self.auth.seed(role)

    @property
    def tls_ca(self) -> Path | None:
        """The CA file clients verify this cluster with (None: no TLS)."""
        return self.tls.ca.resolve() if self.tls else None

    def tls_args(self) -> list[str]:
        """`--tls-ca FILE` for the `wallaroo` processes started on this cluster."""
        return ["--tls-ca", str(self.tls_ca)] if self.tls_ca else []

    @property
    def deploy_key(self) -> Path:
        """The private key this cluster's runners trust: sign deploys to it with this."""
        return self.keys.deploy_key

    @property
    def runners(self) -> list[RunnerProcess]:
        return self.pool.runners

    def start(self) -> DevCluster:
        # Runners start while nats-server does: their start (imports, 0.5 s) is the longer,
        # and their first connect retries until the server listens.
        self.launch()
        self.start_runners()
        self.wait_ready()
        return self

    def launch(self) -> None:
        """Start nats-server without waiting for it to listen (wait_ready does): the caller
        goes on meanwhile."""
        self.server.launch()

    def start_runners(self) -> None:
        self.pool.scale_to(self.initial)

    def wait_ready(self) -> None:
        """Until the launched nats-server listens; WallarooError if it exits first."""
        self.server.wait_ready()

    @contextlib.contextmanager
    def launched(self) -> Iterator[DevCluster]:
        """`with cluster.launched():` as `with cluster:`, but only nats-server is started,
        without waiting for it (start_runners, wait_ready); all is stopped on exit."""
        try:
            self.launch()
            yield self
        finally:
            self.stop()

    def scale_to(self, n: int) -> None:
        self.pool.scale_to(n)

    def restart_runner(self, index: int, *, kill: bool = True) -> RunnerProcess:
        return self.pool.restart_runner(index, kill=kill)

    def check_runners(self) -> None:
        self.pool.check()

    def stop(self) -> None:
        if self.server.proc is not None and not self.server.alive:
            # nats-server is gone: runners have nothing to commit to, so waiting for them to
            # finish their batches would only wait out STOP_TIMEOUT.
            for r in self.pool.runners:
                r.kill()
        self.pool.stop()
        self.server.stop()
        self.lock.release()

