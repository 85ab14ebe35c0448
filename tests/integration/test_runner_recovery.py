"""A runner on a real nats-server: refuses artifacts from another Python, unsigned or signed
with a key it does not trust (and keeps running the version it runs), and on restart rebuilds
state from the changelog without re-running user code or repeating outputs."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.control.status import Rollout, running_versions, wait_rollout
from wallaroo.core.keys import (
    DEPLOY_KEY_ENV,
    SigningKey,
    deployer_key,
    generate_pair,
    load_signing_key,
)
from wallaroo.core.names import APPS_BUCKET, ARTIFACTS_BUCKET
from wallaroo.core.observe import runner_heartbeats
from wallaroo.core.packaging import build_artifact, load_app, sign
from wallaroo.core.wire import Heartbeat, Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APP = Path(__file__).parent / "apps" / "flaky.py"
FIXED = Path(__file__).parent / "apps" / "flaky_fixed.py"  # the same app, another version
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_artifact_from_another_python_is_refused_with_both_versions(tmp_path: Path) -> None:
    async def body(url: str) -> list[dict[str, object]]:
        nats = await Nats.connect(url)
        try:
            app, _ = load_app(APP)
            artifact, manifest = build_artifact(app, APP)
            key = deployer_key()  # conftest's, which DevCluster runners trust
            assert key is not None
            manifest = sign(artifact, dataclasses.replace(manifest, python="3.9"), key)
            await apps.ensure_streams(nats, manifest.slug)
            await nats.obj_put(ARTIFACTS_BUCKET, manifest.artifact_name, artifact)
            await nats.kv_put(APPS_BUCKET, manifest.slug, manifest.to_wire())
            return await wait_for_error(nats)
        finally:
            await nats.close()

    with DevCluster(tmp_path / "c") as cluster:
        beats = asyncio.run(body(cluster.url))
        cluster.check_runners()  # the runner reported the error and kept running
    error = beats[0].errors["flaky"]
    assert "deployed from Python 3.9" in error and "runs Python 3.11" in error


async def wait_for_error(nats: Nats) -> list[Heartbeat]:
    for _ in range(300):
        beats = await runner_heartbeats(nats)
        if beats and beats[0].errors:
            return beats
        await asyncio.sleep(0.05)
    raise AssertionError("the runner never reported the refused artifact")


def test_restart_restores_state_without_rerunning_user_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("FLAKY_CALLS", str(calls))
    with DevCluster(tmp_path / "c") as cluster:
        first = asyncio.run(feed(cluster.url, [b"1", b"2", b"3"]))
        cluster.restart_runner(0, kill=True)
        second = asyncio.run(feed(cluster.url, [b"4", b"5"]))

    assert sorted(first) == ["even 2 2", "odd 1 1", "odd 3 4"]
    # state survived the SIGKILL (6 = 2 + 4, 9 = 1 + 3 + 5) and nothing was emitted twice
    assert sorted(second) == sorted(first + ["even 4 6", "odd 5 9"])
    # restoring replayed the changelog: user code ran once per record, never again
    assert sorted(calls.read_text().split()) == ["1", "2", "3", "4", "5"]


async def feed(url: str, records: list[bytes]) -> list[str]:
    nats = await Nats.connect(url)
    try:
        manifest = await apps.deploy(nats, APP)
        await ingest.send(nats, manifest, "numbers", records, ingest.fresh_producer_id())
        await apps.wait_idle(nats, manifest, timeout=60)
        return (await collect_outputs(nats, manifest))["sums"]
    finally:
        await nats.close()


def test_unsigned_and_foreign_signed_deploys_are_refused_and_the_running_version_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAKY_CALLS", str(tmp_path / "calls.log"))
    foreign = generate_pair(tmp_path / "foreign")[0]

    async def body(url: str) -> tuple[Manifest, Rollout, Rollout, str, list[str], Rollout]:
        nats = await Nats.connect(url)
        try:
            first = await apps.deploy(nats, APP)
            assert (await wait_rollout(nats, first, 60, min_ready=1)).ok
            # The version it runs, signed anew by a foreign key: refused too, not "running".
            same = await resign_and_wait(nats, first, load_signing_key(foreign))
            assert list(same.failed) == ["r0"] and same.ready == [], same
            refused = await deploy_and_wait(nats, FIXED, foreign)
            with monkeypatch.context() as m:  # no key anywhere: an unsigned deploy
                m.delenv(DEPLOY_KEY_ENV)
                m.chdir(tmp_path)
                unsigned = await deploy_and_wait(nats, FIXED, None)
            running = running_versions(first.slug, await runner_heartbeats(nats))
            # The old version still runs: records flow through it.
            await ingest.send(nats, first, "numbers", [b"1", b"2"], ingest.fresh_producer_id())
            await apps.wait_idle(nats, first, timeout=60)
            outputs = (await collect_outputs(nats, first))["sums"]
            signed = await deploy_and_wait(nats, FIXED, None)  # conftest's trusted key
            return first, refused, unsigned, running, outputs, signed
        finally:
            await nats.close()

    with DevCluster(tmp_path / "c") as cluster:
        first, refused, unsigned, running, outputs, signed = asyncio.run(body(cluster.url))
        cluster.check_runners()  # refusing never stopped the runner

    (why,) = refused.failed.values()
    fp = load_signing_key(foreign).fingerprint
    assert f"SignatureError: flaky version {refused.version} is signed with key {fp}, but this " \
           "runner trusts ed25519:" in why
    assert refused.ready == [] and refused.version != first.version
    (why,) = unsigned.failed.values()
    assert "is unsigned, and this runner runs only deploys signed by ed25519:" in why
    assert running == f"{first.version} (1)"
    assert sorted(outputs) == ["even 2 2", "odd 1 1"]
    assert signed.ok and len(signed.ready) == 1


async def deploy_and_wait(nats: Nats, app_file: Path, key: Path | None) -> Rollout:
    manifest = await apps.deploy(nats, app_file, key=key)
    return await wait_rollout(nats, manifest, 60)


async def resign_and_wait(nats: Nats, deployed: Manifest, key: SigningKey) -> Rollout:
    """Deploy `deployed`'s artifact again (the same version), signed with `key`."""
    artifact = await nats.obj_get(ARTIFACTS_BUCKET, deployed.artifact_name)
    assert artifact is not None
    manifest = sign(artifact, dataclasses.replace(deployed, created=deployed.created + 1), key)
    await nats.kv_put(APPS_BUCKET, manifest.slug, manifest.to_wire())
    return await wait_rollout(nats, manifest, 60)
