"""Authentication and per-role permissions, enforced by a real nats-server started with the
configuration `wallaroo dev` uses: anonymous and unknown keys are refused at connect; the
client role may feed sources and call functions, and every write that could make a runner run
code or lose data is refused by the server (the target is checked to be untouched)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.core import codec
from wallaroo.core.errors import CredentialsError
from wallaroo.core.names import APPS_BUCKET, MEMBERS_BUCKET, RESULTS_BUCKET, AppNames
from wallaroo.local.auth import ensure_auth
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats
from wallaroo.nats.protocol import CREDS_ENV

WORD_COUNT = Path(__file__).resolve().parents[2] / "examples" / "word_count" / "word_count.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_anonymous_and_unknown_keys_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CREDS_ENV)
    stranger = ensure_auth(tmp_path / "stranger").seed("client")  # a valid key the server never saw
    with DevCluster(tmp_path / "c", runners=0) as cluster:
        for creds in (None, stranger):
            with pytest.raises(CredentialsError, match="refused"):
                asyncio.run(Nats.connect(cluster.url, persistent=False, creds=creds))


async def refused(nats: Nats, caplog: pytest.LogCaptureFixture, subject: str,
                  payload: bytes = b"x") -> bool:
    """Publish on core NATS; True once the server answered with a permissions violation."""
    caplog.clear()
    await nats.announce(subject, payload)
    await nats.nc.flush(timeout=5)
    for _ in range(100):
        said = [r.getMessage().lower() for r in caplog.records]  # nats-py lowercases errors
        if any("permissions violation" in m and subject.lower() in m for m in said):
            return True
        await asyncio.sleep(0.02)
    return False


def test_the_client_role_feeds_apps_but_cannot_write_what_runners_trust(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="wallaroo.nats")
    with DevCluster(tmp_path / "c", runners=1) as cluster:
        asyncio.run(_as_client(cluster, caplog))


async def _as_client(cluster: DevCluster, caplog: pytest.LogCaptureFixture) -> None:
    deployer = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
    client = await Nats.connect(cluster.url, creds=cluster.creds("client"))
    try:
        manifest = await apps.deploy(deployer, WORD_COUNT)
        names = AppNames(manifest.slug)
        # Allowed: feed the source, read the outputs (direct gets), stream and consumer info.
        await ingest.send(client, manifest, "lines", [b"to be or not"], "auth-test")
        await apps.wait_idle(client, manifest, timeout=60)
        assert sorted((await collect_outputs(client, manifest))["counts"]) == sorted(
            ["to => 1", "be => 1", "or => 1", "not => 1"])
        data_seq = await deployer.stream_last_seq(names.data_stream)
        # Refused: a pickle into a keyed stage (runners unpickle those), a forged end of input
        # or timer (control subject), commit, output or dead letter, a manifest, a heartbeat,
        # a function result, an ack.
        forged = codec.dumps((["k"], ["v"]))
        for subject in (names.data(1, 0), names.control(0, 0), names.log(1, 0), names.out("counts"),
                        names.dlq(1),
                        f"$KV.{APPS_BUCKET}.word_count", f"$KV.{MEMBERS_BUCKET}.r9",
                        f"$KV.{RESULTS_BUCKET}.fd-forged", "$JS.ACK.x.y.1.1.1.1.0"):
            assert await refused(client, caplog, subject, forged), subject
        assert await deployer.stream_last_seq(names.data_stream) == data_seq
        assert await deployer.kv_get(RESULTS_BUCKET, "fd-forged") is None
        # Refused: stream admin (delete, purge), durable consumers, message deletion.
        for subject in (f"$JS.API.STREAM.DELETE.{names.data_stream}",
                        f"$JS.API.STREAM.PURGE.{names.out_stream}",
                        f"$JS.API.STREAM.MSG.DELETE.{names.out_stream}",
                        f"$JS.API.CONSUMER.DURABLE.CREATE.{names.data_stream}.thief",
                        f"$JS.API.CONSUMER.CREATE.{names.data_stream}.thief.{names.data(1, 0)}"):
            assert await refused(client, caplog, subject, b"{}"), subject
        assert await deployer.stream_last_seq(names.out_stream) > 0  # nothing purged
        await _runner_role_cannot_deploy(cluster, caplog, names)
    finally:
        await client.close()
        await deployer.close()


async def _runner_role_cannot_deploy(cluster: DevCluster, caplog: pytest.LogCaptureFixture,
                                     names: AppNames) -> None:
    """A compromised runner still cannot ship code: manifests and artifacts are the deployer's."""
    runner = await Nats.connect(cluster.url, creds=cluster.creds("runner"))
    try:
        for subject in (f"$KV.{APPS_BUCKET}.evil", "$O.WL_ARTIFACTS.C.evil",
                        f"$JS.API.STREAM.DELETE.{names.log_stream}"):
            assert await refused(runner, caplog, subject), subject
    finally:
        await runner.close()


