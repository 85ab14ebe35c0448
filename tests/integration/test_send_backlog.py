"""A sender bounded by a Backlog, on a real nats-server with real runners, sending as the
client role: the source never holds more than the bound; with no runner taking the source the
send stops with a clear error once the backlog has not moved for `stall` seconds, and sending
again with the same producer id, a runner up, goes on where it stopped, every record once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.core.errors import BacklogStalledError
from wallaroo.core.names import AppNames
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats, Out

APP = Path(__file__).parent / "apps" / "slow.py"  # ~2 ms a record: the sender outruns it
RECORDS = [f"r{i}".encode() for i in range(120)]
BATCH = 4  # records per message: 30 messages
LIMIT = 5  # messages the source may hold unprocessed
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_bounded_sender_stays_within_its_backlog_and_resumes_after_a_stall(tmp_path: Path) -> None:
    with DevCluster(tmp_path / "c", runners=0) as cluster:
        asyncio.run(scenario(cluster))


async def scenario(cluster: DevCluster) -> None:
    deployer = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
    client = await Nats.connect(cluster.url, creds=cluster.creds("client"))
    try:
        manifest = await apps.deploy(deployer, APP, key=cluster.deploy_key)
        names = AppNames(manifest.slug)
        waiting = names.sources(0)

        # No runner: the first window goes, the next waits, and the send stops.
        with pytest.raises(BacklogStalledError, match=r"5 message\(s\) waiting in source 'in' .* "
                           r"after 20 record\(s\)"):
            await ingest.send(client, manifest, "in", RECORDS, "bounded", batch_size=BATCH,
                              backlog=ingest.Backlog(LIMIT, stall=1.0))
        assert await client.subject_count(names.data_stream, waiting) == LIMIT

        # A runner up: the same producer goes on, never more than LIMIT waiting just after
        # each of its windows went.
        cluster.scale_to(1)
        seen = counted_after_each_publish(client, names.data_stream, waiting)
        sent = await ingest.send(client, manifest, "in", RECORDS, "bounded", batch_size=BATCH,
                                 backlog=ingest.Backlog(LIMIT, stall=60.0))
        assert (sent.records, sent.new) == (len(RECORDS), len(RECORDS) - LIMIT * BATCH)
        assert len(seen) >= len(RECORDS) // BATCH // LIMIT and max(seen) <= LIMIT
        await apps.wait_idle(client, manifest, timeout=60)
        assert sorted((await collect_outputs(client, manifest))["out"]) == sorted(
            r.decode() for r in RECORDS)
    finally:
        await client.close()
        await deployer.close()


def counted_after_each_publish(nats: Nats, stream: str, subjects: str) -> list[int]:
    """The source's unprocessed count read after each publish_all of `nats` from now on."""
    seen: list[int] = []
    publish_all = nats.publish_all

    async def counting(outs: Sequence[Out]) -> set[str]:
        dropped = await publish_all(outs)
        seen.append(await nats.subject_count(stream, subjects))
        return dropped

    nats.publish_all = counting  # type: ignore[method-assign]
    return seen
