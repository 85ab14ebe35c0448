"""`wallaroo run APP.py`: deploy the app (on an embedded dev cluster when no NATS URL is given),
run its `@app.local_entrypoint()` here, then stop what was started."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from wallaroo.control import apps
from wallaroo.control.status import wait_rollout
from wallaroo.core import calls
from wallaroo.core.errors import AppLoadError, WallarooError
from wallaroo.core.packaging import load_deployable
from wallaroo.functions import App
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

ROLLOUT_TIMEOUT = 60.0


def run_app(app_file: Path, url: str | None, runners: int, state_dir: Path) -> None:
    """Deploy and run the entrypoint; its exceptions propagate (the CLI shows them)."""
    deployed, _ = load_deployable(app_file)  # fail on a broken app before starting anything
    if deployed.entrypoint is None:
        msg = (f"{app_file}: app {deployed.name!r} has no entrypoint: decorate the function to "
               "run with @app.local_entrypoint()")
        raise AppLoadError(msg)
    if url is not None:
        _deploy_and_run(app_file, url, deployed, None)  # signed with the deployer's key
        return
    with DevCluster(state_dir, runners) as cluster:
        _info(f"nats-server at {cluster.url}, {runners} runner(s), logs in {state_dir / 'logs'}")
        try:
            _deploy_and_run(app_file, cluster.url, deployed, cluster.deploy_key)
        finally:
            calls.close_portals()
            _info("stopping runners and nats-server")


def _deploy_and_run(app_file: Path, url: str, deployed: App, key: Path | None) -> None:
    os.environ["WALLAROO_NATS"] = url  # where the entrypoint's calls (f.remote...) go
    started = time.monotonic()
    version = asyncio.run(_deploy(app_file, url, key))
    _info(f"deployed {deployed.name} version {version} in {time.monotonic() - started:.1f}s; "
          "running its local entrypoint")
    assert deployed.entrypoint is not None
    deployed.entrypoint()


async def _deploy(app_file: Path, url: str, key: Path | None) -> str:
    nats = await Nats.connect(url, name="wallaroo-run", persistent=False)
    try:
        manifest = await apps.deploy(nats, app_file, key=key)
        state = await wait_rollout(nats, manifest, ROLLOUT_TIMEOUT, min_ready=1)
        if state.failed or not state.ready:
            why = "; ".join(state.problems()) or "no runner took it"
            msg = f"runners did not take {manifest.name} {manifest.version}: {why}"
            raise WallarooError(msg)
        return manifest.version
    finally:
        await nats.close()


def _info(text: str) -> None:
    sys.stderr.write(f"wallaroo: {text}\n")
    sys.stderr.flush()
