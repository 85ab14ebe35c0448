"""What a runner runs for an app's connectors: one task per connector source and sink, each
under a cluster lease so that exactly one runner runs it.

    for key, factory in connector_tasks(nats, manifest.slug, app, stop):
        asyncio.create_task(run_leased(nats, runner_id, cluster_cfg, key, factory, stop))
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from wallaroo.connectors import ConnectorSink, ConnectorSource
from wallaroo.core.aio import sleep_or_stop
from wallaroo.core.errors import WallarooError
from wallaroo.nats import Nats
from wallaroo.plan import Application
from wallaroo_runtime.cluster import ClusterConfig, ClusterWatch, Lease
from wallaroo_runtime.connectors.progress import KvProgress, sink_key, source_key
from wallaroo_runtime.connectors.sinks import SinkStats, run_sink
from wallaroo_runtime.connectors.sources import run_source
from wallaroo_runtime.process import backoff

log = logging.getLogger("wallaroo.connectors")
Factory = Callable[[], Coroutine[Any, Any, None]]


def connector_tasks(nats: Nats, manifest_slug: str, app: Application, stop: asyncio.Event,
                    sink_stats: dict[str, SinkStats] | None = None) -> list[tuple[str, Factory]]:
    """(lease key, coroutine factory) for every connector source and sink of `app`. Each
    coroutine runs its connector until `stop` is set, restarting it (with backoff) after a
    failure, so it returns only once `stop` is set (or when cancelled). Sinks count their
    deliveries in `sink_stats` (by sink name)."""
    sink_stats = {} if sink_stats is None else sink_stats
    tasks: list[tuple[str, Factory]] = []
    for st in app.stages:
        cfg = st.source_config
        if st.source is not None and isinstance(cfg, ConnectorSource):
            run = functools.partial(run_source, nats, manifest_slug, st.index, st.partitions,
                                    st.source, cfg, stop, KvProgress(nats))
            tasks.append((source_key(manifest_slug, st.source),
                          _supervised(f"source {manifest_slug}/{st.source}", run, stop)))
    for sink in app.sinks:
        if isinstance(sink, ConnectorSink):
            stats = sink_stats.setdefault(sink.name, SinkStats())
            run = functools.partial(run_sink, nats, manifest_slug, sink.name, sink, stop, stats)
            tasks.append((sink_key(manifest_slug, sink.name),
                          _supervised(f"sink {manifest_slug}/{sink.name}", run, stop)))
    return tasks


def _supervised(label: str, run: Factory, stop: asyncio.Event) -> Factory:
    async def supervise() -> None:
        delays = backoff()
        while not stop.is_set():
            delay = next(delays)
            try:
                await run()
            except Exception as err:  # a connector restarts from its recorded progress
                log.error("%s failed, restarting in %.1fs: %s", label, delay, err, exc_info=True)
            if stop.is_set():
                return
            await sleep_or_stop(stop, delay)

    return supervise


async def run_leased(nats: Nats, runner_id: str, cluster_cfg: ClusterConfig, key: str,
                     factory: Factory, stop: asyncio.Event, watch: ClusterWatch | None = None
                     ) -> None:
    """Run `factory()` while this runner holds the connector lease `key`, until `stop`.

    Unlike a partition's, a connector's lease is never taken from a live holder (no leader
    moves connectors): patience is infinite, and another runner takes over only once the
    holder's membership lapsed (with the runner's `watch`: once it was heard silent for its
    TTL, not when the server drops its entry, about a quarter second later). The holder
    checks every tick that the lease is still its own (a paused runner may have lapsed
    meanwhile) and stops the connector if not."""
    lease = Lease(nats, key, runner_id, dataclasses.replace(cluster_cfg, lease_patience=math.inf),
                  watch)
    try:
        if not await lease.acquire(lambda: not stop.is_set()):
            return
        log.info("%s runs connector %s", runner_id, key)
        task = asyncio.create_task(factory())
        try:
            await _watch(lease, task, stop, cluster_cfg.tick)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        with contextlib.suppress(WallarooError, OSError, TimeoutError):
            await lease.release()


async def _watch(lease: Lease, task: asyncio.Task[None], stop: asyncio.Event, tick: float) -> None:
    """Return when the connector ended (it saw `stop`) or the lease is no longer ours."""
    while not task.done():
        await asyncio.wait({task}, timeout=tick)
        if not task.done() and not stop.is_set() and not await _still_held(lease):
            log.warning("lost connector lease %s: stopping it", lease.key)
            return
    await task  # surfaces a connector's own exception


async def _still_held(lease: Lease) -> bool:
    try:
        return await lease.held()
    except Exception as err:  # NATS unreachable for a moment: ownership did not change for that
        log.warning("cannot check connector lease %s: %s", lease.key, err)
        return True
