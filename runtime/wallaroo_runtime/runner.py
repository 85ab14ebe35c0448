"""The long-lived runner process: watches deployed apps in NATS KV, loads their artifacts,
creates their streams and runs a worker per owned (stage, partition)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field

from wallaroo.errors import FencedError, WallarooError
from wallaroo.names import APPS_BUCKET, ARTIFACTS_BUCKET, RUNNERS_BUCKET, AppNames
from wallaroo.natsio import Nats
from wallaroo.packaging import Manifest, load_artifact
from wallaroo.plan import Application
from wallaroo_runtime.ownership import Ownership, StaticOwnership
from wallaroo_runtime.worker import PartitionWorker, WorkerConfig

log = logging.getLogger("wallaroo.runner")
RESTART_BACKOFF = (0.2, 5.0)


@dataclass
class AppHost:
    """One deployed version of one app on this runner."""

    nats: Nats
    manifest: Manifest
    app: Application
    ownership: Ownership
    cfg: WorkerConfig
    workers: dict[tuple[int, int], PartitionWorker] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    failures: int = 0

    async def start(self) -> None:
        names = AppNames(self.app.slug)
        for stream, (subject, work_queue) in names.streams().items():
            await self.nats.ensure_stream(stream, [subject], work_queue=work_queue)
        for stage in self.app.stages:
            for part in range(stage.partitions):
                if self.ownership.owns(self.app.slug, stage.index, part):
                    self.tasks.append(asyncio.create_task(self._supervise(stage.index, part)))

    async def _supervise(self, stage: int, part: int) -> None:
        delay = RESTART_BACKOFF[0]
        while True:
            worker = PartitionWorker(self.nats, self.app, self.manifest.version,
                                     self.app.stages[stage], part, self.cfg)
            self.workers[(stage, part)] = worker
            try:
                await worker.run()
                return
            except FencedError as err:
                log.error("%s", err)
            except (WallarooError, OSError, TimeoutError, ConnectionError) as err:
                self.failures += 1
                log.error("worker %s/%d/%d failed (%d failures so far): %s",
                          self.app.slug, stage, part, self.failures, err, exc_info=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF[1])

    async def stop(self) -> None:
        for w in self.workers.values():
            w.stop()
        done, pending = await asyncio.wait(self.tasks, timeout=10) if self.tasks else (set(), set())
        for t in pending:
            t.cancel()

    def report(self) -> dict[str, object]:
        return {
            "version": self.manifest.version,
            "failures": self.failures,
            "partitions": {
                f"{s}/{p}": {"commits": w.progress.commits, "records": w.progress.records,
                             "dead": w.progress.dead, "committed_seq": w.state.committed_seq}
                for (s, p), w in sorted(self.workers.items())
            },
        }


class Runner:
    def __init__(self, url: str, ownership: Ownership, cfg: WorkerConfig | None = None,
                 poll: float = 0.5) -> None:
        self.url, self.ownership, self.cfg, self.poll = url, ownership, cfg or WorkerConfig(), poll
        self.hosts: dict[str, AppHost] = {}
        self.errors: dict[str, str] = {}
        self.started = time.time()

    async def run(self, stop: asyncio.Event) -> None:
        nats = await Nats.connect(self.url, name=f"wallaroo-runner-{self.ownership.runner_id}")
        log.info("runner %s (pid %d) connected to %s", self.ownership.runner_id, os.getpid(), self.url)
        try:
            while not stop.is_set():
                await self._sync_apps(nats)
                await self._heartbeat(nats)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll)
        finally:
            for host in self.hosts.values():
                await host.stop()
            await nats.close()

    async def _sync_apps(self, nats: Nats) -> None:
        for slug in await nats.kv_keys(APPS_BUCKET):
            raw = await nats.kv_get(APPS_BUCKET, slug)
            if raw is None:
                continue
            manifest = Manifest.from_json(raw)
            host = self.hosts.get(slug)
            if host is not None and host.manifest.version == manifest.version:
                continue
            if self.errors.get(slug, "").startswith(manifest.version):
                continue
            await self._switch(nats, manifest)

    async def _switch(self, nats: Nats, manifest: Manifest) -> None:
        """Start a newly deployed version; the old one finishes its batches first."""
        try:
            artifact = await nats.obj_get(ARTIFACTS_BUCKET, manifest.artifact_name)
            if artifact is None:
                msg = f"artifact {manifest.artifact_name} is missing from {ARTIFACTS_BUCKET}"
                raise WallarooError(msg)
            app = load_artifact(artifact, manifest)
        except WallarooError as err:
            self.errors[manifest.slug] = f"{manifest.version}: {err}"
            log.error("cannot run %s %s: %s", manifest.name, manifest.version, err)
            return
        old = self.hosts.pop(manifest.slug, None)
        if old is not None:
            await old.stop()
        host = AppHost(nats, manifest, app, self.ownership, self.cfg)
        await host.start()
        self.hosts[manifest.slug] = host
        self.errors.pop(manifest.slug, None)
        log.info("running %s version %s (%d workers)", manifest.name, manifest.version, len(host.tasks))

    async def _heartbeat(self, nats: Nats) -> None:
        body = {
            "id": self.ownership.runner_id, "pid": os.getpid(), "host": socket.gethostname(),
            "started": self.started, "ts": time.time(),
            "apps": {slug: h.report() for slug, h in self.hosts.items()},
            "errors": self.errors,
        }
        await nats.kv_put(RUNNERS_BUCKET, self.ownership.runner_id, json.dumps(body).encode())


def main(url: str, index: int = 0, count: int = 1) -> None:
    """Run a runner until SIGINT/SIGTERM (then finish the batches in hand and exit)."""
    logging.basicConfig(level=os.environ.get("WALLAROO_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_main(url, StaticOwnership(index, count)))


async def _main(url: str, ownership: Ownership) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Runner(url, ownership).run(stop)
