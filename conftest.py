"""Fixtures shared by tests/ and examples/: real nats-server and real runner processes."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest

from wallaroo.control import apps, ingest
from wallaroo.core import codec
from wallaroo.core.keys import DEPLOY_KEY_ENV, generate_pair
from wallaroo.core.names import AppNames
from wallaroo.core.wire import Manifest
from wallaroo.local.auth import AUTH_DIR_ENV, dev_auth, ensure_auth
from wallaroo.local.dev import DevCluster
from wallaroo.local.natsserver import NatsServer, free_port
from wallaroo.nats import Nats
from wallaroo.nats.client import CREDS_ENV

RunOnRunner = Callable[..., dict[str, list[str]]]
REGION = "us-east-1"
BUCKET = "wallaroo-state"


@pytest.fixture(scope="session", autouse=True)
def _authentication(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Authentication is on in every test: one set of role keys for the session, which every
    nats-server a test starts admits (through $WALLAROO_AUTH_DIR); tests and the processes
    they start connect as the deployer (full rights) unless a test picks another role."""
    keys = ensure_auth(tmp_path_factory.mktemp("auth"))
    saved = {k: os.environ.get(k) for k in (AUTH_DIR_ENV, CREDS_ENV)}
    os.environ[AUTH_DIR_ENV] = str(keys.folder)
    os.environ[CREDS_ENV] = str(keys.seed("deployer"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def deployer_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One deploy key for the run, set as $WALLAROO_DEPLOY_KEY as a deployer would: deploys
    from tests (`apps.deploy`, `wallaroo deploy`) are signed with it, and every DevCluster's
    runners trust it next to the cluster's own key. Tests of unsigned or foreign-signed
    deploys make their own keys, or unset it."""
    private, _ = generate_pair(tmp_path_factory.mktemp("deployer"))
    before = os.environ.get(DEPLOY_KEY_ENV)
    os.environ[DEPLOY_KEY_ENV] = str(private)
    yield private
    if before is None:
        os.environ.pop(DEPLOY_KEY_ENV, None)
    else:
        os.environ[DEPLOY_KEY_ENV] = before


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream nats-server with authentication on a free loopback port, stopped after
    the test."""
    with NatsServer(tmp_path / "nats", auth=dev_auth(tmp_path)) as server:
        yield server


@pytest.fixture
def run_on_runner(tmp_path: Path) -> Iterator[RunOnRunner]:
    """run(app_file, [(source, record bytes), ...], runners=1) -> {sink: [output lines]}:
    deploys the app on a fresh cluster of real runner processes, sends every record (each
    source's records in the given order), waits until all are processed, returns outputs."""
    clusters: list[DevCluster] = []

    def run(app_file: Path, inputs: list[tuple[str, bytes]], runners: int = 1,
            timeout: float = 120.0) -> dict[str, list[str]]:
        cluster = DevCluster(tmp_path / f"cluster{len(clusters)}", runners)
        clusters.append(cluster)
        cluster.start()
        try:
            return asyncio.run(asyncio.wait_for(drive(cluster.url, app_file, inputs), timeout))
        finally:
            cluster.stop()

    yield run
    for c in clusters:
        c.stop()


async def drive(url: str, app_file: Path, inputs: list[tuple[str, bytes]]) -> dict[str, list[str]]:
    nats = await Nats.connect(url)
    try:
        manifest = await apps.deploy(nats, app_file)
        for n, (source, group) in enumerate(groupby(inputs, key=lambda p: p[0])):
            records = [r for _, r in group]
            await ingest.send(nats, manifest, source, records, f"test{n}")
        await apps.wait_idle(nats, manifest, timeout=60)
        return await collect_outputs(nats, manifest)
    finally:
        await nats.close()


async def collect_outputs(nats: Nats, manifest: Manifest) -> dict[str, list[str]]:
    """Every output in the app's output stream, per sink, as text lines. Read by direct gets,
    not a consumer: after a NATS node loss, creating one waits for a new meta leader."""
    names = AppNames(manifest.slug)
    last = await nats.stream_last_seq(names.out_stream)
    sinks = {names.out(s): s for s in manifest.sinks}
    outputs: dict[str, list[str]] = {s: [] for s in manifest.sinks}
    async for m in nats.read_subject(names.out_stream, names.out_all, last, complete=True):
        outputs[sinks[m.subject]].extend(out.decode("utf-8").removesuffix("\n")
                                         for out in codec.unpack_batch(m.data))
    return outputs


class Moto:
    """A moto S3 server on one loopback port that a test can stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()  # returns once the server accepts connections

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, and no instance-metadata lookups: nothing may leave loopback."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def moto(aws_env: None) -> Iterator[Moto]:
    """A running moto server with an empty bucket."""
    server = Moto()
    server.start()
    try:
        # moto keeps its fake AWS in process globals that outlive a server: start each test empty.
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/moto-api/reset", method="POST"),
                               timeout=10).close()
        import boto3  # noqa: TID251 - the test makes the bucket the store is checked against

        s3: Any = boto3.client("s3", region_name=REGION, endpoint_url=server.url)
        s3.create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()
