"""`wallaroo autoscaler`: the loop as a process, with the chosen backend."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from wallaroo_runtime.autoscale.backends import Backend, LocalBackend, StaticBackend
from wallaroo_runtime.autoscale.loop import run_autoscaler
from wallaroo_runtime.autoscale.policy import Policy


def main(url: str, backend_name: str, policy: Policy, interval: float,
         asg_group: str | None, region: str) -> None:
    logging.basicConfig(level=os.environ.get("WALLAROO_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    pool = None
    if backend_name == "local":
        from wallaroo.dev import RunnerPool

        pool = RunnerPool(url, Path(".wallaroo/autoscaler/logs"))
        pool.scale_to(policy.min_runners)
        backend: Backend = LocalBackend(pool)
    elif backend_name == "aws":
        from wallaroo_runtime.autoscale.aws import AwsAsgBackend

        assert asg_group is not None
        backend = AwsAsgBackend(asg_group, region=region)
    else:
        backend = StaticBackend(policy.min_runners)
    try:
        asyncio.run(_run(url, backend, policy, interval))
    finally:
        if pool is not None:
            pool.stop()


async def _run(url: str, backend: Backend, policy: Policy, interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_autoscaler(url, backend, policy, interval, stop)
