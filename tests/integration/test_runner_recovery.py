"""A runner on a real nats-server: refuses artifacts from another Python, and on restart rebuilds
state from the changelog without re-running user code or repeating outputs."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.core.names import APPS_BUCKET, ARTIFACTS_BUCKET
from wallaroo.core.observe import runner_heartbeats
from wallaroo.core.packaging import build_artifact, load_app
from wallaroo.core.wire import Heartbeat
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APP = Path(__file__).parent / "apps" / "flaky.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_artifact_from_another_python_is_refused_with_both_versions(tmp_path: Path) -> None:
    async def body(url: str) -> list[dict[str, object]]:
        nats = await Nats.connect(url)
        try:
            app, _ = load_app(APP)
            artifact, manifest = build_artifact(app, APP)
            manifest = dataclasses.replace(manifest, python="3.9")
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
