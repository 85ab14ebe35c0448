"""`wallaroo run APP.py`: deploy the app (on an embedded dev cluster when no NATS URL is given),
run its `@app.local_entrypoint()` here, then stop what was started."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from wallaroo.control import apps
from wallaroo.control.status import wait_rollout
from wallaroo.core import calls, observe
from wallaroo.core.calls import cluster_creds, cluster_tls_ca
from wallaroo.core.errors import AppLoadError, WallarooError
from wallaroo.core.packaging import load_deployable, register_classes
from wallaroo.core.wire import Manifest
from wallaroo.functions import App
from wallaroo.local.dev import DevCluster
from wallaroo.local.devrun import info as _info
from wallaroo.nats import Nats
from wallaroo.nats.protocol import CREDS_ENV, TLS_CA_ENV

ROLLOUT_TIMEOUT = 60.0
WATCH_EVERY = 0.5  # seconds between checks of the embedded cluster's runners


def run_app(app_file: Path, url: str | None, runners: int, state_dir: Path,
            tls: bool = False) -> None:
    """Deploy and run the entrypoint; its exceptions propagate (the CLI shows them). `tls`:
    the embedded cluster speaks TLS only (see DevCluster)."""
    deployed, _ = load_deployable(app_file)  # fail on a broken app before starting anything
    if deployed.entrypoint is None:
        msg = (f"{app_file}: app {deployed.name!r} is no job (not all its sources are bounded) "
               "and has no entrypoint: give its FileSource/S3Source bounded=True, or decorate "
               "the function to run with @app.local_entrypoint() (`wallaroo dev` runs an "
               "endless app)")
        raise AppLoadError(msg)
    if url is not None:
        _deploy_and_run(app_file, url, deployed, cluster_access(None))
        return
    with DevCluster(state_dir, runners, tls=tls) as cluster:
        _info(f"nats-server at {cluster.url}, {runners} runner(s), logs in {state_dir / 'logs'}")
        watching = threading.Event()
        threading.Thread(target=_watch, args=(cluster, watching), daemon=True).start()
        try:
            _deploy_and_run(app_file, cluster.url, deployed,
                            Access(cluster.deploy_key, cluster.creds("deployer"),
                                   cluster.creds("client"), cluster.tls_ca))
        finally:
            watching.set()
            calls.close_portals()
            _info("stopping runners and nats-server")


def _watch(cluster: DevCluster, done: threading.Event) -> None:
    """Replace runners that ask for it (a call cancelled with terminate=True) while the
    entrypoint runs; say once if one died."""
    while not done.wait(WATCH_EVERY):
        try:
            cluster.check_runners()
        except WallarooError as err:
            _info(f"{err}")
            return


@dataclass(frozen=True)
class Access:
    """How `wallaroo run` reaches a cluster: the deploy key it signs with (None: the
    deployer's own, see keys.deployer_key), the deployer's and the client's credentials, the
    CA its TLS certificate is checked against."""

    deploy_key: Path | None
    deployer: Path | None
    client: Path | None
    tls_ca: Path | None


def cluster_access(deploy_key: Path | None) -> Access:
    """How to reach the cluster the CLI finds (--creds, $WALLAROO_CREDS, a `wallaroo dev`
    in this folder; --tls-ca ...)."""
    return Access(deploy_key, cluster_creds("deployer"), cluster_creds("client"), cluster_tls_ca())


def _deploy_and_run(app_file: Path, url: str, deployed: App, access: Access) -> None:
    os.environ["WALLAROO_NATS"] = url  # where the entrypoint's calls (f.remote...) go
    if access.tls_ca is not None:
        os.environ[TLS_CA_ENV] = str(access.tls_ca)  # ... verifying the server with this CA
    started = time.monotonic()
    manifest = asyncio.run(_deploy(app_file, url, access))
    if access.client is not None:
        os.environ[CREDS_ENV] = str(access.client)  # ... made with the client role's rights
    # The app's classes get the importable homes the runners gave them, so an exception
    # class of the app raised remotely is rebuilt here as itself (not as a RemoteError).
    register_classes(deployed, manifest)
    _info(f"deployed {deployed.name} version {manifest.version} in "
          f"{time.monotonic() - started:.1f}s; running its local entrypoint")
    assert deployed.entrypoint is not None
    deployed.entrypoint()


async def _deploy(app_file: Path, url: str, access: Access) -> Manifest:
    nats = await connect(url, access)
    try:
        return await deploy_and_wait(nats, app_file, access)
    finally:
        await nats.close()


async def connect(url: str, access: Access) -> Nats:
    """`wallaroo run`'s connection, as the deployer."""
    return await Nats.connect(url, name="wallaroo-run", persistent=False, creds=access.deployer,
                              tls_ca=access.tls_ca)


async def wait_members(nats: Nats, count: int, timeout: float, since: float = 0.0,
                       poll: float = 0.02) -> None:
    """Until `count` runners started at or after `since` (wall clock) heartbeat: a reused
    state directory may still hold the beats of an earlier run's runners, not yet lapsed.
    WallarooError after `timeout` seconds (their logs say why a runner did not start)."""
    deadline = time.monotonic() + timeout
    while (up := await _members_since(nats, since)) < count:
        if time.monotonic() > deadline:
            msg = f"only {up} of {count} runners started within {timeout:g}s; their logs say why"
            raise WallarooError(msg)
        await asyncio.sleep(poll)


async def _members_since(nats: Nats, since: float) -> int:
    return sum(1 for beat in await observe.runner_heartbeats(nats) if beat.started >= since)


async def deploy_and_wait(nats: Nats, app_file: Path, access: Access) -> Manifest:
    """Deploy the app and wait until a runner runs it; WallarooError naming why if none does."""
    manifest = await apps.deploy(nats, app_file, key=access.deploy_key)
    state = await wait_rollout(nats, manifest, ROLLOUT_TIMEOUT, min_ready=1)
    if state.failed or not state.ready:
        why = "; ".join(state.problems()) or "no runner took it"
        msg = f"runners did not take {manifest.name} {manifest.version}: {why}"
        raise WallarooError(msg)
    return manifest
