"""The NATS node of infra/ for real: templates/nats-server.conf rendered as terraform renders it
(127.0.0.1 and free ports in place of the private IP and 4222/6222/8222), its secrets put by
`wallaroo infra secrets` into SSM (a moto server on loopback), fetched by `wallaroo infra fetch`
and its certificate issued by `wallaroo infra node-cert`, as wallaroo-secrets.service does at
boot; the files laid out as systemd's credentials directory. Then a real nats-server:
- the runner's credentials and CA connect over tls:// and may publish to stage subjects;
- anonymous clients, plain nats:// and clients trusting another CA are refused;
- two members form a route over mutual TLS; a member whose certificate another CA signed
  is refused by the member it dials, and never joins."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_terraform import nats_conf
from typer.testing import CliRunner

from conftest import REGION, Moto
from wallaroo.cli import app
from wallaroo.core.errors import CredentialsError, TlsError
from wallaroo.core.keys import generate_pair
from wallaroo.local.natsserver import free_port, server_binary, wait_for_port
from wallaroo.local.tls import cert_pem, ensure_tls, key_pem, new_ca, write_node_cert
from wallaroo.nats import Nats
from wallaroo.nats.protocol import CREDS_ENV, TLS_CA_ENV

pytestmark = [pytest.mark.infra, pytest.mark.integration, pytest.mark.timeout(180)]
IP = "127.0.0.1"
NODE_FILES = ("auth.conf", "ca.pem", "server.pem", "server-key.pem")  # nats-server.service's


def wallaroo(*args: str) -> None:
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


@dataclass
class Node:
    """One NATS node: its secrets folder (/etc/wallaroo/nats), its credentials directory
    (%d of nats-server.service) and the nats-server process started from them."""

    name: str
    folder: Path
    ports: tuple[int, int, int] = field(default_factory=lambda: (free_port(), free_port(), free_port()))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tls://{IP}:{self.ports[0]}"

    @property
    def log(self) -> Path:
        return self.folder / "nats-server.log"

    def start(self, routes: list[int]) -> None:
        """Lay out the credentials directory as systemd does, start nats-server from it with
        the environment the unit sets, and wait for the client port."""
        creds = self.folder / "credentials"
        creds.mkdir()
        for name in NODE_FILES:
            shutil.copy(self.folder / "secrets" / name, creds / name)
        (creds / "nats-server.conf").write_text(nats_conf(
            self.name, IP, [f"nats-route://{IP}:{p}" for p in routes],
            str(self.folder / "js"), self.ports))
        env = os.environ | {"NATS_TLS_CA": str(creds / "ca.pem"),
                            "NATS_TLS_CERT": str(creds / "server.pem"),
                            "NATS_TLS_KEY": str(creds / "server-key.pem")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(server_binary()), "--config", str(creds / "nats-server.conf")], env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_port(self.ports[0], 20, self.proc)

    def peers(self) -> set[str]:
        """Names of the servers this one has a route to (several connections each: pooling)."""
        with urllib.request.urlopen(f"http://{IP}:{self.ports[2]}/routez", timeout=5) as r:
            return {route["remote_name"] for route in json.load(r)["routes"] or []}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def secrets(moto: Moto, tmp_path: Path) -> Path:
    """`wallaroo infra secrets` into SSM, then each reader's path fetched into tmp_path/<reader>."""
    _, public = generate_pair(tmp_path / "keys")
    wallaroo("infra", "secrets", "--name", "demo", "--region", REGION, "--deploy-pub", str(public),
             "--out", str(tmp_path / "operator"), "--endpoint-url", moto.url)
    for reader in ("nats", "runner"):
        wallaroo("infra", "fetch", "--path", f"/wallaroo/demo/{reader}", "--dest",
                 str(tmp_path / reader), "--region", REGION, "--endpoint-url", moto.url)
    return tmp_path


@pytest.fixture
def nodes(secrets: Path) -> Iterator[Callable[[str], Node]]:
    """node(name): a Node whose secrets are the fetched nats path plus a certificate issued by
    `wallaroo infra node-cert`; every node made is stopped after the test."""
    made: list[Node] = []

    def node(name: str) -> Node:
        folder = secrets / name
        shutil.copytree(secrets / "nats", folder / "secrets")
        wallaroo("infra", "node-cert", "--ca-dir", str(folder / "secrets"), "--ip", IP,
                 "--out", str(folder / "secrets"))
        made.append(Node(name, folder))
        return made[-1]

    yield node
    for n in made:
        n.stop()


async def publish_and_receive(url: str, creds: Path, ca: Path, subject: str) -> bytes:
    nats = await Nats.connect(url, persistent=False, creds=creds, tls_ca=ca)
    try:
        sub = await nats.nc.subscribe(subject)
        await nats.announce(subject, b"over tls")
        return bytes((await sub.next_msg(timeout=5)).data)
    finally:
        await nats.close()


async def connect_and_close(url: str, creds: Path, ca: Path) -> None:
    nats = await Nats.connect(url, persistent=False, creds=creds, tls_ca=ca)
    await nats.close()


def test_runner_creds_connect_over_tls_and_strangers_are_refused(
        nodes: Callable[[str], Node], secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CREDS_ENV)  # the session's dev keys mean nothing to this server
    monkeypatch.delenv(TLS_CA_ENV, raising=False)
    node = nodes("n0")
    # A route to a peer that never comes: JetStream's cluster mode needs one configured, as
    # every node of infra/ has.
    node.start(routes=[free_port()])
    runner = secrets / "runner"
    got = asyncio.run(publish_and_receive(node.url, runner / "creds.nk", runner / "ca.pem",
                                          "wl.x.d.1.0"))
    assert got == b"over tls"
    operator = secrets / "operator"  # what `wallaroo infra secrets --out` gave the operator
    asyncio.run(connect_and_close(node.url, operator / "client.nk", operator / "ca.pem"))
    with pytest.raises(CredentialsError, match="refused"):  # anonymous
        asyncio.run(Nats.connect(node.url, persistent=False, tls_ca=runner / "ca.pem"))
    with pytest.raises(TlsError, match=r"tls:// URL"):  # plain text to the TLS port
        asyncio.run(Nats.connect(node.url.replace("tls://", "nats://"), persistent=False,
                                 creds=runner / "creds.nk", tls_ca=runner / "ca.pem"))
    other_ca = ensure_tls(secrets / "other").ca
    with pytest.raises(TlsError, match="certificate verify failed"):  # a CA not the cluster's
        asyncio.run(Nats.connect(node.url, persistent=False, creds=runner / "creds.nk",
                                 tls_ca=other_ca))


def test_routes_need_a_certificate_from_the_cluster_ca(nodes: Callable[[str], Node],
                                                        secrets: Path) -> None:
    a, b, stranger = nodes("a"), nodes("b"), nodes("stranger")
    _sign_with_another_ca(stranger.folder / "secrets")
    a.start(routes=[b.ports[1]])  # each member lists the others, as infra/nats.tf renders it
    b.start(routes=[a.ports[1]])
    wait_until(lambda: a.peers() == {"b"} and b.peers() == {"a"}, "the route between a and b")
    stranger.start(routes=[a.ports[1]])
    # The stranger trusts the cluster CA, so the refusal is a's: it asks the dialing peer for
    # a certificate from the cluster CA (Go's TLS client then sends none, having no such one).
    wait_until(lambda: "TLS route handshake error" in a.log.read_text(),
               "a to refuse the stranger's route")
    assert stranger.peers() == set()
    assert a.peers() == {"b"} and b.peers() == {"a"}


def _sign_with_another_ca(folder: Path) -> None:
    """Replace a node's certificate with one for the same address that another CA signed; the
    node still trusts the cluster CA (its ca.pem stays)."""
    other = folder.parent / "other-ca"
    other.mkdir()
    ca, key = new_ca("someone else's CA")
    (other / "ca.pem").write_bytes(cert_pem(ca))
    (other / "ca-key.pem").write_bytes(key_pem(key))
    write_node_cert(other, [IP], folder)
