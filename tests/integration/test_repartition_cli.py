"""`wallaroo deploy` and `wallaroo rollback` with other partition counts, as a user runs them:
real nats-server with authentication, real runner processes, the CLI as subprocesses. The
keyed state moves by key (wallaroo.core.repartition): counts go on across 2 -> 5 -> 2."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_cli import version_of
from test_rollback import ClusterCli, outputs_at_least

from wallaroo.control import apps
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APPS = Path(__file__).parent / "apps" / "versions"
TWO, FIVE = APPS / "counter_v1.py", APPS / "counter_p5.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_deploy_and_rollback_change_partition_counts_and_the_counts_go_on(tmp_path: Path) -> None:
    with DevCluster(tmp_path / "c", runners=2) as cluster:
        cli = ClusterCli(cluster, tmp_path)
        send_and_wait = cli.send_and_wait

        code, out1, err = cli("deploy", str(TWO))
        assert code == 0, err
        send_and_wait(["a", "b", "a"], 3)
        code, out2, err = cli("deploy", str(FIVE))
        assert code == 0, err
        send_and_wait(["a", "b"], 5)
        rolled = rollback_once_settled(cli)
        send_and_wait(["a", "c"], 7)
        outputs = outputs_at_least(cluster.url, 7)
        latest = asyncio.run(manifest_now(cluster.url))
        status = cli("status", role="client")

    v1, v2 = version_of(out1), version_of(out2)
    assert sorted(outputs[:3]) == ["a => 1", "a => 2", "b => 1"]
    assert sorted(outputs[3:5]) == ["a => 3", "b => 2"]
    assert sorted(outputs[5:]) == ["a => 4", "c => 1"]
    assert rolled == f"rolled counter back from version {v2} to {v1}\n"
    assert status[0] == 0 and "counter" in status[1] and "Traceback" not in status[2], status
    stage = latest.stages[1]  # v1's 2 partitions, numbered after both earlier layouts
    assert (latest.version, stage.partitions, stage.base, stage.prev) == (v1, 2, 7, [2, 5])


def rollback_once_settled(cli: Callable[..., tuple[int, str, str]], timeout: float = 60.0) -> str:
    """Roll back; while the deploy before is still moving state, the refusal says so and a
    later try goes through."""
    deadline = time.monotonic() + timeout
    while True:
        code, out, err = cli("rollback", "counter")
        if code == 0:
            return out
        assert "is still moving its state from 2 to 5 partitions" in err, err
        assert time.monotonic() < deadline, f"still refused after {timeout}s: {err}"
        time.sleep(0.2)


async def manifest_now(url: str) -> Manifest:
    nats = await Nats.connect(url)
    try:
        return await apps.manifest_of(nats, "counter")
    finally:
        await nats.close()
