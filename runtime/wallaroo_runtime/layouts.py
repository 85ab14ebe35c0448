"""Retiring the drained layout of a re-partitioned stage (wallaroo.core.repartition), and
reclaiming what its partitions leave behind: the leader's job, in passes it repeats.

Who decides: the leader, which already assigns partitions and may read every changelog. Once
a stage is settled (every new partition's last changelog record shows MIGRATED, which every
later record carries on) and the stage it routes into drains no layout of its own, the leader
records in `WL_LAYOUTS` that the old partitions are retired (`Retirement.retired`). From then
on it assigns none of them, and every runner lays the stage out without its drained layout
(AppHost.laid_out), so no worker runs them and no sender republishes end-of-layout markers to
them. On a later pass, partition by partition, it takes the partition's lease (free once the
worker that ran it stopped and released it; a dead holder's is taken over), then deletes its
durable consumer, purges its input and changelog subjects, deletes its snapshots, deltas and
segments from the state store, and purges the lease key; once a stage's partitions are all
gone it records them reclaimed (`Retirement.reclaimed`).

Why it is safe: a new partition reads the old states only before its MIGRATED commit (a runner
killed mid-migration reads them again, but then the stage is not settled), so after that
nobody reads them. A zombie still running an old partition can do no harm: its changelog
append is fenced by the subject's last sequence, which the purge changed, and whatever else it
writes (a snapshot of a state nobody reads) is a leak at worst, never an input of anyone.
Every step is repeatable and the record is written last, by compare-and-swap: a leader killed
midway leaves a record the next pass (its own or a new leader's) finishes from."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from wallaroo.core import observe, repartition
from wallaroo.core.errors import WallarooError
from wallaroo.core.names import LAYOUTS_BUCKET, LEASES_BUCKET, AppNames, partition_key
from wallaroo.core.wire import Manifest, Part, Retirement
from wallaroo.nats import Nats
from wallaroo_runtime import snapshot
from wallaroo_runtime.cluster import ClusterConfig, ClusterWatch, Lease
from wallaroo_runtime.statestore import StateStore

log = logging.getLogger("wallaroo.layouts")


@dataclass
class LayoutKeeper:
    """The leader's passes over the apps' layouts. `running_here(slug, part)`: does a worker
    of this runner still run the partition (its own lease must not be taken from under it)?"""

    nats: Nats
    runner_id: str
    cluster_cfg: ClusterConfig
    store: StateStore | None
    running_here: Callable[[str, Part], bool]
    watch: ClusterWatch | None = None  # the runner's: a lease holder heard go silent is gone

    async def keep(self, manifest: Manifest) -> None:
        """One pass over one app: record what is now retired, or else reclaim what was
        retired before (a later pass: by then the runners have stopped running it)."""
        entry = await self.nats.kv_entry(LAYOUTS_BUCKET, manifest.slug)
        record = Retirement.from_wire(entry.value) if entry is not None else Retirement()
        revision = entry.revision if entry is not None else None
        retired = await self._newly_retired(manifest, record)
        if retired is not None:
            if await self._save(manifest.slug, retired, revision):
                log.info("%s: retired drained layouts: partitions below %s per stage",
                         manifest.slug, retired.retired)
            return
        reclaimed = await self._reclaim(manifest, record)
        if reclaimed != record.reclaimed:
            done = Retirement(record.retired, reclaimed)
            if await self._save(manifest.slug, done, revision):
                log.info("%s: reclaimed retired partitions below %s per stage", manifest.slug, reclaimed)

    async def _newly_retired(self, manifest: Manifest, record: Retirement) -> Retirement | None:
        pending = repartition.unsettled(manifest, record)
        waiting = {st.index for st in pending}
        if pending:
            waiting -= await observe.settled_stages(self.nats, manifest, pending)
        settled = {st.index for st in manifest.stages} - waiting
        return repartition.to_retire(manifest, record, settled)

    async def _reclaim(self, manifest: Manifest, record: Retirement) -> dict[int, int]:
        """`record.reclaimed`, moved on for the stages whose retired partitions are all gone."""
        reclaimed = dict(record.reclaimed)
        for stage, parts in repartition.to_reclaim(manifest, record).items():
            gone = [await self._reclaim_part(manifest.slug, stage, p) for p in parts]
            if all(gone):
                reclaimed[stage] = parts.stop
        return reclaimed

    async def _reclaim_part(self, slug: str, stage: int, part: int) -> bool:
        """Remove what partition `part` of `stage` left behind; False while a worker still
        runs it (it is asked to stop: the next pass finds it gone)."""
        if self.running_here(slug, (stage, part)):
            return False
        lease = Lease(self.nats, partition_key(slug, stage, part), self.runner_id, self.cluster_cfg,
                      self.watch)
        if not await lease.take_if_free():
            return False
        try:
            await self._remove(slug, stage, part)
        except BaseException:
            # Let go of it: a new leader (this runner may lose leadership meanwhile) must be
            # able to take the lease and finish, not wait for this process to die.
            with contextlib.suppress(WallarooError, OSError, TimeoutError):
                await lease.release()
            raise
        # Last: until the key goes, the lease held here keeps any late worker out.
        await self.nats.kv_purge(LEASES_BUCKET, lease.key)
        return True

    async def _remove(self, slug: str, stage: int, part: int) -> None:
        names = AppNames(slug)
        await self.nats.delete_consumer(names.data_stream, AppNames.durable(stage, part))
        await self.nats.purge_subject(names.data_stream, names.data(stage, part))
        await self.nats.purge_subject(names.log_stream, names.log(stage, part))
        if self.store is not None:
            await snapshot.forget(self.store, slug, stage, part)

    async def _save(self, slug: str, record: Retirement, revision: int | None) -> bool:
        """Write the record if nobody else did since we read it (a leader that just took
        over may run a pass too); False: the next pass reads it again."""
        if revision is None:
            written = await self.nats.kv_create(LAYOUTS_BUCKET, slug, record.to_wire())
        else:
            written = await self.nats.kv_update(LAYOUTS_BUCKET, slug, record.to_wire(), revision)
        return written is not None
