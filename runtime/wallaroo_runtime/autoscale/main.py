"""`wallaroo autoscaler`: the loop as a process, with the chosen backend."""

from __future__ import annotations

import asyncio
import logging
import os

from wallaroo.nats import Nats
from wallaroo_runtime.autoscale.backends import Backend, LocalBackend, StaticBackend
from wallaroo_runtime.autoscale.loop import Autoscaler
from wallaroo_runtime.autoscale.policy import Policy
from wallaroo_runtime.metrics import AutoscalerMetrics, serve
from wallaroo_runtime.process import run_until_signal

log = logging.getLogger("wallaroo.autoscaler")


def main(url: str, backend_name: str, policy: Policy, interval: float,
         asg_group: str | None, region: str, metrics_at: tuple[str, int] | None = None) -> None:
    """Run the autoscaler until SIGINT/SIGTERM; with `metrics_at` (host, port; port 0: any
    free one), export its observations and decisions on /metrics there."""
    metrics: AutoscalerMetrics | None = None
    if metrics_at is not None:
        metrics = AutoscalerMetrics()
        log.info("metrics on http://%s/metrics", serve(metrics.registry, *metrics_at).address)

    async def body(stop: asyncio.Event) -> None:
        nats = await Nats.connect(url, name="wallaroo-autoscaler")
        try:
            backend = _backend(nats, backend_name, policy, asg_group, region)
            log.info("autoscaler (pid %d) with the %s backend, %d..%d runners, deciding every %gs",
                     os.getpid(), backend.name, policy.min_runners, policy.max_runners, interval)
            on_tick = metrics.observed if metrics is not None else None
            await Autoscaler(nats, backend, policy, on_tick=on_tick).run(stop, interval)
        finally:
            await nats.close()

    run_until_signal(body)


def _backend(nats: Nats, name: str, policy: Policy, asg_group: str | None, region: str) -> Backend:
    if name == "local":
        return LocalBackend(nats)
    if name == "aws":
        from wallaroo_runtime.autoscale.aws import AwsAsgBackend  # needs the `aws` extra

        assert asg_group is not None
        return AwsAsgBackend(asg_group, region=region)
    return StaticBackend(policy.min_runners)
