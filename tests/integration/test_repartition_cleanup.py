"""A drained layout is retired and what it leaves is reclaimed, without another deploy
(wallaroo_runtime.layouts): real nats-server with authentication, two real runner processes
snapshotting every 2 commits into a file:// store. Once 2 -> 5 partitions settled, the old
partitions' consumers, input and changelog messages, snapshots and segments, and lease keys
are gone and `wallaroo status` shows none of them; the counts stay exact (every record
once, each key's counts in order); a change to 3 partitions is accepted at once, and its
drained layout goes the same way."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from conftest import collect_outputs
from wallaroo.control import apps, ingest, status
from wallaroo.core import observe
from wallaroo.core.names import LEASES_BUCKET, AppNames, partition_key
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APPS = Path(__file__).parent / "apps" / "versions"
TWO, FIVE, THREE = APPS / "counter_v1.py", APPS / "counter_p5.py", APPS / "counter_wide.py"
WORDS = [f"w{i % 23}".encode() for i in range(240)]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def eventually(cond: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.1)


class Leftovers:
    """What partitions of stage 1 of the counter leave in NATS and in the state store."""

    def __init__(self, nats: Nats, store: Path) -> None:
        self.nats, self.store, self.names = nats, store, AppNames("counter")

    def files(self, part: int) -> list[Path]:
        folders = [self.store / kind / "counter" / "1" / str(part) for kind in ("snapshots", "segments")]
        return [f for d in folders for f in d.rglob("*") if f.is_file()]

    async def of(self, part: int) -> dict[str, int]:
        """Per kind of resource, how much of it the partition still has (0: none)."""
        n, lease = self.nats, partition_key("counter", 1, part)
        consumer = await n.consumer_lag(self.names.data_stream, AppNames.durable(1, part))
        return {
            "consumer": int(consumer is not None),
            "changelog": await n.subject_count(self.names.log_stream, self.names.log(1, part)),
            "input": await n.subject_count(self.names.data_stream, self.names.data(1, part)),
            "lease": await n.subject_count(f"KV_{LEASES_BUCKET}", f"$KV.{LEASES_BUCKET}.{lease}"),
            "store files": len(self.files(part)),
        }

    async def none_left(self, parts: range) -> bool:
        found = [await self.of(p) for p in parts]
        return not any(v for kinds in found for v in kinds.values())


async def reclaimed(nats: Nats, below: int) -> bool:
    return (await observe.retirement(nats, "counter")).reclaimed.get(1, 0) >= below


async def send_and_settle(nats: Nats, m: Manifest, words: list[bytes], tag: str) -> None:
    await ingest.send(nats, m, "words", words, tag, batch_size=4)
    await apps.wait_idle(nats, m, timeout=90)


async def scenario(cluster: DevCluster) -> tuple[list[str], dict[str, list[str]]]:
    nats = await Nats.connect(cluster.url)
    left = Leftovers(nats, cluster.state_dir / "state")
    seen: dict[str, list[str]] = {}
    try:
        two = await apps.deploy(nats, TWO)
        await send_and_settle(nats, two, WORDS[:80], "a")
        # Both old partitions really have something of each kind to leave behind.
        await eventually(lambda: _has_all(left, range(2)), "state of the 2 partitions in the store")

        sending = asyncio.create_task(ingest.send(nats, two, "words", WORDS[80:160], "b", batch_size=2))
        five = await apps.deploy(nats, FIVE)  # while records flow
        await sending
        await apps.wait_idle(nats, five, timeout=90)
        await eventually(lambda: left.none_left(range(2)), "nothing left of the 2 old partitions")
        assert await reclaimed(nats, 2)
        seen["lags"] = sorted(map(str, await observe.partition_lags(nats, five)))
        seen["status"] = [f"{r[1]}.{r[2]}" for r in (await status.gather(nats)).partitions]

        three = await apps.deploy(nats, THREE)  # no "still moving its state" refusal
        await send_and_settle(nats, three, WORDS[160:], "c")
        await eventually(lambda: left.none_left(range(7)), "nothing left of the 5 partitions after")
        assert await reclaimed(nats, 7)
        latest = await apps.manifest_of(nats, "counter")
        seen["layout"] = [f"{latest.stages[1].base}+{latest.stages[1].partitions}"]
        return (await collect_outputs(nats, latest))["counts"], seen
    finally:
        await nats.close()


async def _has_all(left: Leftovers, parts: range) -> bool:
    """Every kind but input messages (acked ones leave the work queue)."""
    found = [await left.of(p) for p in parts]
    return all(v for kinds in found for k, v in kinds.items() if k != "input")


def test_a_drained_layout_is_reclaimed_and_the_counts_stay_exact(tmp_path: Path) -> None:
    with DevCluster(tmp_path / "c", runners=2, member_ttl=1.0,
                    runner_args=["--snapshot-every", "2", "--snapshot-seconds", "0.5"]) as cluster:
        outputs, seen = asyncio.run(scenario(cluster))

    assert seen["lags"] == ["(0, 0)"] + [f"(1, {p})" for p in range(2, 7)]
    assert sorted(seen["status"]) == ["0.0"] + [f"1.{p}" for p in range(2, 7)]
    assert seen["layout"] == ["7+3"]
    want = Counter(f"w{k} => {n}" for k, c in Counter(i % 23 for i in range(240)).items()
                   for n in range(1, c + 1))
    assert Counter(outputs) == want  # every record once
    per_key: dict[str, list[int]] = defaultdict(list)
    for line in outputs:
        word, _, n = line.partition(" => ")
        per_key[word].append(int(n))
    assert all(ns == list(range(1, len(ns) + 1)) for ns in per_key.values()), per_key
