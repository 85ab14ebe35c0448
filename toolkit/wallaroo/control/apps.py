"""Deploying an app and waiting on it: artifact + manifest into NATS, streams created; the
deployed manifest by name; "has every stage consumed its input"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from wallaroo.core import observe, repartition
from wallaroo.core.errors import NotDeployedError, WallarooError
from wallaroo.core.keys import SigningKey, deployer_key
from wallaroo.core.names import APPS_BUCKET, ARTIFACTS_BUCKET, LAYOUTS_BUCKET, AppNames
from wallaroo.core.packaging import build_artifact, load_deployable, sign
from wallaroo.core.wire import Manifest, Retirement
from wallaroo.functions import App
from wallaroo.nats import Nats
from wallaroo.plan import Retention

RECORD_TRIES = 5  # compare-and-swap attempts on the retirement record


async def deploy(nats: Nats, app_file: Path, args: list[str] | None = None,
                 key: Path | None = None) -> Manifest:
    """Build the app, sign it with the private key in `key` (default: `keys.deployer_key`,
    unsigned when there is none), store artifact (object store) and manifest (KV), create
    its streams."""
    signer = deployer_key(key)  # a bad key file fails before anything is built
    app, _ = load_deployable(app_file, args)
    return await deploy_loaded(nats, app, app_file, signer)


async def deploy_loaded(nats: Nats, app: App, app_file: Path,
                        signer: SigningKey | None) -> Manifest:
    """`deploy` of an app already loaded from `app_file` (`wallaroo dev` loads it once, to
    check it and its input before deploying)."""
    artifact, manifest = build_artifact(app, app_file)
    manifest = await lay_out(nats, manifest)
    manifest = sign(artifact, manifest, signer) if signer is not None else manifest
    # Streams and artifact are independent requests: made together, not one round trip
    # after another. The manifest goes last: runners act on it, and then need both.
    await asyncio.gather(ensure_streams(nats, manifest.slug, app.built().retention),
                         nats.obj_put(ARTIFACTS_BUCKET, manifest.artifact_name, artifact))
    await nats.kv_put(APPS_BUCKET, manifest.slug, manifest.to_wire())
    return manifest


async def lay_out(nats: Nats, manifest: Manifest, what: str = "deploy") -> Manifest:
    """`manifest` laid out after the deployed one (wallaroo.core.repartition): a stage with
    another partition count gets a new layout, which the runners fill from the old one by
    key. Refuses (LayoutError) what cannot move keyed state."""
    raw = await nats.kv_get(APPS_BUCKET, manifest.slug)
    deployed = None if raw is None else Manifest.from_wire(raw)
    settled = set() if deployed is None else await observe.settled_stages(nats, deployed)
    laid = repartition.lay_out(manifest, deployed, settled, what)
    await forget_stale_retirements(nats, laid, deployed)
    return laid


async def forget_stale_retirements(nats: Nats, laid: Manifest, deployed: Manifest | None) -> None:
    """Before `laid` is written: drop what the runners' retirement record says of stages
    this deploy removes or starts anew (repartition.still_valid), so it never retires a
    layout of another stage that later drains at the same index. Compare-and-swap against
    the leader, which may write the record meanwhile."""
    for _ in range(RECORD_TRIES):
        entry = await nats.kv_entry(LAYOUTS_BUCKET, laid.slug)
        if entry is None:
            return
        record = Retirement.from_wire(entry.value)
        kept = repartition.still_valid(record, laid, deployed)
        if kept == record or await nats.kv_update(LAYOUTS_BUCKET, laid.slug, kept.to_wire(),
                                                  entry.revision) is not None:
            return
    msg = f"the layout record of {laid.slug} kept changing under this deploy; deploy again"
    raise WallarooError(msg)


async def ensure_streams(nats: Nats, slug: str, retention: Retention | None = None) -> None:
    """Create the app's streams, and set the retention limits of its output and dead-letter
    streams (a redeploy with other limits changes them)."""
    kept = retention or Retention()
    names = AppNames(slug)
    limits = {names.out_stream: (kept.output_max_age, kept.output_max_bytes),
              names.dlq_stream: (kept.dead_letter_max_age, kept.dead_letter_max_bytes)}
    made = []
    for stream, (subjects, work_queue) in names.streams().items():
        max_age, max_bytes = limits.get(stream, (None, None))
        made.append(nats.ensure_stream(stream, subjects, work_queue=work_queue, max_age=max_age,
                                       max_bytes=max_bytes))
    await asyncio.gather(*made)  # together: each is a round trip or two, none waits on another


async def manifest_of(nats: Nats, app: str) -> Manifest:
    """The deployed manifest of `app` (its name or slug)."""
    deployed = await observe.manifests(nats)
    for m in deployed:
        if app in (m.slug, m.name):
            return m
    raise NotDeployedError(app, [m.slug for m in deployed])


async def wait_idle(nats: Nats, manifest: Manifest, timeout: float, poll: float = 0.05) -> None:
    """Return once every stage has consumed and acknowledged all its input (checked in stage
    order, twice in a row, so records in flight between stages are seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet = 0
    while quiet < 2:
        if loop.time() > deadline:
            msg = f"{manifest.name} still has unprocessed input after {timeout:.0f}s"
            raise TimeoutError(msg)
        lags = await observe.stage_lags(nats, manifest)
        idle = all(s.pending == 0 and s.ack_pending == 0 and s.missing == 0 for s in lags)
        quiet = quiet + 1 if idle else 0
        await asyncio.sleep(poll)
