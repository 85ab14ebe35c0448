"""An app's deployed versions and `wallaroo rollback`: the manifest key's KV history is the
list of deploys (the bucket keeps the last 16 writes of each key), and every version's
artifact stays in the object store under its content hash (a deploy never deletes one), so
rolling back needs no app file.

A rollback writes a new manifest: the earlier version's, with a fresh `created` (so a fresh
deploy id, which the rollout and the runners' refusals name) and signed by the deployer's
key now. Replaying the old signed manifest as it was would not be a hole (only the deployer
role may write manifests, and whoever can is already able to replay one), but it would carry
the old deploy id, so a rollout could not tell it from the first deploy of that version, and
a signature by a key the runners no longer trust would be refused."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from wallaroo.control.apps import forget_stale_retirements, manifest_of
from wallaroo.core import observe, repartition
from wallaroo.core.errors import ArtifactError, RollbackError, UnknownVersionError
from wallaroo.core.keys import SigningKey, Trust, deployer_key
from wallaroo.core.names import APPS_BUCKET, ARTIFACTS_BUCKET
from wallaroo.core.packaging import sign, verify_artifact
from wallaroo.core.wire import Manifest
from wallaroo.nats import Nats


@dataclass(frozen=True)
class Version:
    """One version of an app: its latest deploy, when it was first deployed, how often."""

    manifest: Manifest
    first_deployed: float
    deploys: int
    current: bool


@dataclass(frozen=True)
class Deploys:
    """An app's deploys, oldest first (the last one is what runners run), and the KV revision
    of the last one (a rollback writes only if no deploy came in between)."""

    history: list[Manifest]
    revision: int

    @property
    def current(self) -> Manifest:
        return self.history[-1]

    def versions(self) -> list[Version]:
        """Every version, the most recently deployed first."""
        latest: dict[str, Manifest] = {}
        for m in reversed(self.history):
            latest.setdefault(m.version, m)
        return [Version(m, min(d.created for d in self.history if d.version == m.version),
                        sum(d.version == m.version for d in self.history),
                        m.version == self.current.version) for m in latest.values()]


async def deploys(nats: Nats, app: str) -> Deploys:
    """The deploys of `app` (its name or slug) still in the manifest history."""
    slug = (await manifest_of(nats, app)).slug
    entries = await nats.kv_history(APPS_BUCKET, slug)
    if not entries:
        msg = f"{app}: the manifest history is empty; deploy it again"
        raise RollbackError(msg)
    return Deploys([Manifest.from_wire(e.value) for e in entries], entries[-1].revision)


def target(found: Deploys, to: str | None) -> Manifest:
    """The manifest to roll back to: the version deployed before the current one, or the
    one whose version starts with `to`."""
    versions = [v.manifest for v in found.versions()]
    name, now = found.current.name, found.current.version
    if len(versions) == 1:
        msg = (f"{name} has only one version deployed ({now}): there is nothing to roll back "
               "to; deploy the version you want with `wallaroo deploy APP.py`")
        raise RollbackError(msg)
    if to is None:
        return versions[1]  # [0] is the current one: the most recently deployed
    matches = [m for m in versions if m.version.startswith(to)]
    if not matches:
        raise UnknownVersionError(name, to, [m.version for m in versions])
    if len(matches) > 1:
        msg = (f"{to!r} is the start of several versions of {name}: "
               f"{', '.join(m.version for m in matches)}; give more of it")
        raise RollbackError(msg)
    if matches[0].version == now:
        msg = f"{name} is already at version {now}; `wallaroo versions {name}` lists the others"
        raise RollbackError(msg)
    return matches[0]


def check_layout(current: Manifest, earlier: Manifest, settled: set[int] | None = None) -> Manifest:
    """`earlier` laid out after `current` (wallaroo.core.repartition): other partition counts
    get a new layout the runners fill by key; what cannot move keyed state is refused.
    `settled`: the stages of `current` draining no earlier layout (default: all of them)."""
    done = {s.index for s in current.stages} if settled is None else settled
    try:
        return repartition.lay_out(earlier, current, done,
                                   f"roll {current.name} back to version {earlier.version}")
    except repartition.LayoutError as err:
        raise RollbackError(str(err)) from None


async def rollback(nats: Nats, app: str, to: str | None = None,
                   key: Path | None = None) -> tuple[Manifest, Manifest]:
    """Point `app` back at an earlier version (see `target`): (the manifest it replaced, the
    one written). Signed with `key` (default: `keys.deployer_key`; unsigned without one)."""
    signer = deployer_key(key)  # a bad key file fails before anything is written
    found = await deploys(nats, app)
    earlier = target(found, to)
    laid = check_layout(found.current, earlier, await observe.settled_stages(nats, found.current))
    artifact = await nats.obj_get(ARTIFACTS_BUCKET, earlier.artifact_name)
    if artifact is None:
        msg = (f"the artifact of {earlier.name} version {earlier.version} is gone from "
               f"{ARTIFACTS_BUCKET}; deploy that version again from its app file")
        raise RollbackError(msg)
    check_artifact(artifact, earlier, signer)  # as signed then, before its new layout
    await forget_stale_retirements(nats, laid, found.current)
    again = dataclasses.replace(laid, created=time.time(), signature="")
    again = sign(artifact, again, signer) if signer is not None else again
    if await nats.kv_update(APPS_BUCKET, again.slug, again.to_wire(), found.revision) is None:
        msg = (f"{earlier.name} was deployed again while rolling back; nothing was changed: "
               f"see `wallaroo versions {earlier.name}` and run the rollback again")
        raise RollbackError(msg)
    return found.current, again


def check_artifact(artifact: bytes, manifest: Manifest, signer: SigningKey | None) -> None:
    """The stored artifact is the one deployed, before the deployer signs it again: its
    signature when `signer` made it (it covers the artifact's whole sha256), else its
    content hash (the version). Only deployers can write artifacts; this keeps a rollback
    from vouching for bytes that changed since."""
    if signer is not None and manifest.signature.startswith(signer.fingerprint + ":"):
        verify_artifact(artifact, manifest, Trust({signer.fingerprint: signer.public}))
    elif hashlib.sha256(artifact).hexdigest()[:16] != manifest.version:
        msg = f"artifact of {manifest.name} version {manifest.version} does not match its content hash"
        raise ArtifactError(msg)
