"""observe -> decide -> act, once a tick. Observation reads NATS only: consumer lag per stage
(from the consumer leader's info), messages arriving in the data streams, and each runner's
own commit progress from its heartbeat. Units are input messages (record batches)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wallaroo.core import observe
from wallaroo.core.aio import sleep_or_stop
from wallaroo.core.names import AppNames
from wallaroo.nats import Nats
from wallaroo_runtime.autoscale.backends import Backend
from wallaroo_runtime.autoscale.policy import Decision, Observation, Policy, decide

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
    # Told of every tick's observation and decision (the autoscaler's metrics).
    on_tick: Callable[[Observation, Decision], None] | None = None
    _arrived: tuple[float, int] | None = None
    _idle_since: float | None = None

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as err:  # a control loop survives a bad tick, and says so
                self.failures += 1
                log.error("autoscaler tick failed (%d so far): %s", self.failures, err)
            await sleep_or_stop(stop, interval)

    async def tick(self) -> Decision:
        now = self.clock()
        obs = await self.observe(now)
        decision = decide(obs, self.policy, now, self.history)
        self._remember(now, decision)
        if self.on_tick is not None:
            self.on_tick(obs, decision)
        if decision.desired != obs.desired:
            log.info("scale %d -> %d runners: %s", obs.desired, decision.desired, decision.reason)
            await self.backend.set_desired(decision.desired)
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
        lags: list[observe.StageLag] = []
        arrived = 0
        for m in await observe.manifests(self.nats):
            lags += await observe.stage_lags(self.nats, m)
            lags += await observe.function_lags(self.nats, m)
            names = AppNames(m.slug)
            arrived += await self.nats.stream_last_seq(names.data_stream)
            if m.functions:
                arrived += await self.nats.stream_last_seq(names.calls_stream)
        beats = await observe.runner_heartbeats(self.nats)
        rates = tuple(b.msg_rate for b in beats)
        input_rate = self._input_rate(now, arrived)
        quiet = sum(s.lag for s in lags) == 0 and input_rate == 0
        self._idle_since = (self._idle_since or now) if quiet else None
        desired = await self.backend.current()
        return Observation(runners=len(beats), desired=desired, lags=tuple(lags),
                           input_rate=input_rate, runner_rates=rates, idle_since=self._idle_since)

    def _input_rate(self, now: float, arrived: int) -> float:
        """Messages/s appended to the data streams since the last tick."""
        before, self._arrived = self._arrived, (now, arrived)
        if before is None or now <= before[0]:
            return 0.0
        return max(0, arrived - before[1]) / (now - before[0])
