"""The leader's passes that retire a drained layout and reclaim it (wallaroo_runtime.layouts),
on a real nats-server and a file:// store, with the cluster state laid out by hand: a pass
first only records the retirement; a partition whose worker (a live runner) still holds its
lease is left alone; a pass cut short leaves a record that another leader's pass finishes,
and a pass over finished work changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from wallaroo.control import apps
from wallaroo.core import observe, repartition
from wallaroo.core.names import LEASES_BUCKET, MEMBERS_BUCKET, AppNames, partition_key
from wallaroo.core.wire import CommitRecord, Holder, Manifest, Retirement, StageInfo
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime import cluster
from wallaroo_runtime.cluster import ClusterConfig
from wallaroo_runtime.layouts import LayoutKeeper
from wallaroo_runtime.statestore import FileStore

pytestmark = pytest.mark.integration
NAMES = AppNames("counter")


def manifest() -> Manifest:
    """counter, its keyed stage 1 re-laid out from 2 partitions (0, 1) to 5 (2..6)."""
    stages = [StageInfo(0, "words", 1, "words", 1, []),
              StageInfo(1, "count", 5, None, None, ["counts"], base=2, prev=[0, 2])]
    return Manifest(name="counter", slug="counter", version="v", python="3.11", cloudpickle="3",
                    partitions=5, stages=stages, sinks=["counts"], by_value_modules=[], created=0.0)


async def commit(nats: Nats, part: int, **marks: int) -> None:
    rec = CommitRecord(commit_no=1, first_seq=0, last_seq=0, watermarks=marks, states={}, outs=[])
    await nats.publish(NAMES.log(1, part), rec.to_wire())


async def leftovers(nats: Nats, store: FileStore, part: int) -> list[str]:
    lease = partition_key("counter", 1, part)
    found = {
        "consumer": await nats.consumer_lag(NAMES.data_stream, AppNames.durable(1, part)) is not None,
        "changelog": await nats.subject_count(NAMES.log_stream, NAMES.log(1, part)) > 0,
        "input": await nats.subject_count(NAMES.data_stream, NAMES.data(1, part)) > 0,
        "lease": await nats.subject_count(f"KV_{LEASES_BUCKET}", f"$KV.{LEASES_BUCKET}.{lease}") > 0,
        "store": bool(await store.list(f"snapshots/counter/1/{part}/")),
    }
    return sorted(k for k, v in found.items() if v)


async def lay_out_old_partitions(nats: Nats, store: FileStore) -> None:
    """What the 2 old partitions leave behind, partition 1 still held by runner "other"."""
    await cluster.ensure_buckets(nats, ClusterConfig())
    await apps.ensure_streams(nats, "counter")
    for part in (0, 1):
        await commit(nats, part, **{"eol:s0.0": 1})
        await nats.publish(NAMES.data(1, part), b"stray")
        await nats.fresh_consumer(NAMES.data_stream, AppNames.durable(1, part), NAMES.data(1, part))
        await store.put(f"snapshots/counter/1/{part}/000000000001.snap", b"state")
        await nats.kv_put(LEASES_BUCKET, partition_key("counter", 1, part), Holder("other").to_wire())
    await nats.kv_delete(LEASES_BUCKET, partition_key("counter", 1, 0))  # its worker let go
    await nats.kv_put(MEMBERS_BUCKET, "other", b"{}")  # a live runner's heartbeat


async def scenario(url: str, store: FileStore) -> list[object]:
    nats = await Nats.connect(url)
    try:
        await lay_out_old_partitions(nats, store)
        m = manifest()
        leader = LayoutKeeper(nats, "r0", ClusterConfig(), store, lambda slug, part: False)
        seen: list[object] = []
        for part in m.stages[1].parts[:-1]:
            await commit(nats, part, **{repartition.MIGRATED: 1})
        await leader.keep(m)  # one new partition has no state yet: nothing retires
        seen.append(await observe.retirement(nats, "counter"))
        await commit(nats, 6, **{repartition.MIGRATED: 1})
        await leader.keep(m)  # settled: retired, nothing deleted yet
        seen += [await observe.retirement(nats, "counter"), await leftovers(nats, store, 0)]
        await leader.keep(m)  # partition 1's worker still holds its lease
        seen += [await observe.retirement(nats, "counter"), await leftovers(nats, store, 0),
                 await leftovers(nats, store, 1)]
        await nats.kv_delete(MEMBERS_BUCKET, "other")  # its runner died; r0 dies too
        successor = dataclasses.replace(leader, runner_id="r1")
        await successor.keep(m)
        seen += [await observe.retirement(nats, "counter"), await leftovers(nats, store, 1)]
        await successor.keep(m)  # again: harmless
        seen.append(await observe.retirement(nats, "counter"))
        seen.append(sorted(map(str, await observe.partition_lags(nats, m))))
        return seen
    finally:
        await nats.close()


def test_retire_then_reclaim_fenced_by_leases_and_finished_by_another_leader(
        nats_server: NatsServer, tmp_path: Path) -> None:
    seen = asyncio.run(scenario(nats_server.url, FileStore(tmp_path / "state")))
    everything = ["changelog", "consumer", "input", "lease", "store"]  # a released lease: its marker
    assert seen == [
        Retirement(),
        Retirement({1: 2}), everything,
        Retirement({1: 2}), [], everything,
        Retirement({1: 2}, {1: 2}), [],
        Retirement({1: 2}, {1: 2}),
        ["(0, 0)", "(1, 2)", "(1, 3)", "(1, 4)", "(1, 5)", "(1, 6)"],
    ]


class FailingStore(FileStore):
    """A file store whose deletes fail (S3 refusing, say) until `healed`."""

    healed = False

    async def delete(self, key: str) -> None:
        if not self.healed:
            raise OSError("the store refused the delete")
        await super().delete(key)


async def cut_short(url: str, store: FailingStore) -> tuple[list[str], list[str]]:
    nats = await Nats.connect(url)
    try:
        await lay_out_old_partitions(nats, store)
        await nats.kv_delete(LEASES_BUCKET, partition_key("counter", 1, 1))  # let go too
        await nats.kv_put(MEMBERS_BUCKET, "r0", b"{}")  # the first leader stays alive
        m = manifest()
        for part in m.stages[1].parts:
            await commit(nats, part, **{repartition.MIGRATED: 1})
        first = LayoutKeeper(nats, "r0", ClusterConfig(), store, lambda slug, part: False)
        await first.keep(m)  # retires
        with pytest.raises(OSError, match="refused"):
            await first.keep(m)  # its reclaim fails midway, under partition 0's lease
        store.healed = True
        await dataclasses.replace(first, runner_id="r1").keep(m)  # the leader moved on
        return await leftovers(nats, store, 0), await leftovers(nats, store, 1)
    finally:
        await nats.close()


def test_a_reclaim_cut_short_lets_go_of_its_lease_for_the_next_leader(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Held on, the lease of a live runner that lost leadership kept every later leader from
    the partition until that runner's process died."""
    assert asyncio.run(cut_short(nats_server.url, FailingStore(tmp_path / "state"))) == ([], [])
