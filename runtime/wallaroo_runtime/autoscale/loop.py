"""observe -> decide -> act, once a tick. Observation reads NATS only: consumer lag per stage
(from the consumer leader's info), messages arriving in the data streams, and each runner's
own commit progress from its heartbeat. Units are input messages (record batches)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wallaroo import ops, status
from wallaroo.names import AppNames
from wallaroo.natsio import Nats
from wallaroo_runtime.autoscale.backends import Backend
from wallaroo_runtime.autoscale.policy import Decision, Observation, Policy, StageLag, decide

log = logging.getLogger("wallaroo.autoscaler")


@dataclass
class Autoscaler:
    nats: Nats
    backend: Backend
    policy: Policy
    clock: Callable[[], float] = time.monotonic
    history: list[tuple[float, int]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    failures: int = 0
    _arrived: tuple[float, int] | None = None
    _idle_since: float | None = None

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as err:  # a control loop survives a bad tick, and says so
                self.failures += 1
                log.error("autoscaler tick failed (%d so far): %s", self.failures, err)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    async def tick(self) -> Decision:
        now = self.clock()
        obs = await self.observe(now)
        decision = decide(obs, self.policy, now, self.history)
        self._remember(now, decision)
        if decision.desired != obs.desired:
            log.info("scale %d -> %d runners: %s", obs.desired, decision.desired, decision.reason)
            await asyncio.to_thread(self.backend.set_desired, decision.desired)
        else:
            log.debug("stay at %d runners: %s", obs.desired, decision.reason)
        return decision

    def _remember(self, now: float, decision: Decision) -> None:
        self.decisions.append(decision)
        self.history.append((now, decision.recommended))
        horizon = max(self.policy.up_stabilization, self.policy.down_stabilization)
        self.history = [(t, r) for t, r in self.history if now - t <= horizon]
        del self.decisions[:-1000]

    async def observe(self, now: float) -> Observation:
        lags: list[StageLag] = []
        arrived = 0
        for m in await ops.manifests(self.nats):
            lags += [StageLag(m.slug, s.stage, s.name, s.pending + s.ack_pending)
                     for s in await ops.stage_lags(self.nats, m)]
            arrived += await self.nats.stream_last_seq(AppNames(m.slug).data_stream)
        beats = await status.runner_heartbeats(self.nats)
        rates = tuple(_runner_rate(b) for b in beats)
        input_rate = self._input_rate(now, arrived)
        quiet = sum(s.lag for s in lags) == 0 and input_rate == 0
        self._idle_since = (self._idle_since or now) if quiet else None
        desired = await asyncio.to_thread(self.backend.current)
        return Observation(runners=len(beats), desired=desired, lags=tuple(lags),
                           input_rate=input_rate, runner_rates=rates, idle_since=self._idle_since)

    def _input_rate(self, now: float, arrived: int) -> float:
        """Messages/s appended to the data streams since the last tick."""
        before, self._arrived = self._arrived, (now, arrived)
        if before is None or now <= before[0]:
            return 0.0
        return max(0, arrived - before[1]) / (now - before[0])


def _runner_rate(beat: dict[str, object]) -> float:
    apps = beat.get("apps", {})
    assert isinstance(apps, dict)
    return float(sum(p.get("msg_rate", 0.0) for a in apps.values()
                     for p in a.get("partitions", {}).values()))


async def run_autoscaler(url: str, backend: Backend, policy: Policy, interval: float,
                         stop: asyncio.Event) -> Autoscaler:
    """Connect and run the loop until `stop` is set; returns the autoscaler (its decisions)."""
    nats = await Nats.connect(url, name="wallaroo-autoscaler")
    scaler = Autoscaler(nats, backend, policy)
    try:
        await scaler.run(stop, interval)
    finally:
        await nats.close()
    return scaler
