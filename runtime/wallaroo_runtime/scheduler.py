"""The leader fires scheduled functions (`schedule=wallaroo.Period(...)` / `wallaroo.Cron(...)`),
once per tick across the cluster.

Each tick's call id derives from (app, function, tick), and the last fired tick is kept in KV.
A leader that dies after publishing a tick but before recording it leaves the next leader to
publish it again with the same id: JetStream drops the duplicate message, and a runner that
still gets it finds the tick's result already recorded. So a tick runs once, across failover."""

from __future__ import annotations

import logging

from wallaroo.core import calls
from wallaroo.core.names import SCHEDULES_BUCKET
from wallaroo.functions import FunctionSpec

log = logging.getLogger("wallaroo.scheduler")


def tick_call_id(slug: str, function: str, tick: int) -> str:
    return calls.derived_call_id("schedule", slug, function, tick)


async def fire_due(client: calls.CallClient, slug: str, specs: dict[str, FunctionSpec],
                   now: float) -> list[str]:
    """Publish the calls of every tick due at `now`; the call ids fired."""
    fired = []
    for spec in specs.values():
        if spec.schedule is None:
            continue
        key = f"{slug}.{spec.name}"
        raw = await client.nats.kv_get(SCHEDULES_BUCKET, key)
        last = int(raw) if raw else None
        for tick in spec.schedule.due(last, now):
            call_id = tick_call_id(slug, spec.name, tick)
            await client.submit(slug, spec.name, calls.pack_args((), {}, spec.serializer), call_id=call_id)
            await client.nats.kv_put(SCHEDULES_BUCKET, key, str(tick).encode())
            log.info("fired %s/%s for tick %d (%s): call %s", slug, spec.name, tick,
                     spec.schedule.describe(), call_id)
            fired.append(call_id)
    return fired
