"""Which version `wallaroo rollback` goes to, and what it refuses, from a manifest history
alone (the CLI on a real cluster: tests/integration/test_rollback.py)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from wallaroo.control.versions import Deploys, check_artifact, check_layout, target
from wallaroo.core.errors import ArtifactError, RollbackError, SignatureError, UnknownVersionError
from wallaroo.core.keys import generate_pair, load_signing_key
from wallaroo.core.packaging import sign
from wallaroo.core.wire import Manifest, StageInfo


def manifest(version: str, created: float, partitions: tuple[int, ...] = (1, 2)) -> Manifest:
    stages = [StageInfo(i, f"s{i}", p, "in" if i == 0 else None, None, []) for i, p in
              enumerate(partitions)]
    return Manifest(name="counter", slug="counter", version=version, python="3.11",
                    cloudpickle="3", partitions=max(partitions), stages=stages, sinks=[],
                    by_value_modules=[], created=created)


def history(*versions: str) -> Deploys:
    return Deploys([manifest(v, float(t)) for t, v in enumerate(versions)], revision=len(versions))


def test_versions_lists_each_once_most_recent_first_with_its_deploys() -> None:
    found = history("aaaa", "bbbb", "aaaa", "cccc", "aaaa")
    rows = [(v.manifest.version, v.manifest.created, v.first_deployed, v.deploys, v.current)
            for v in found.versions()]
    assert rows == [("aaaa", 4.0, 0.0, 3, True), ("cccc", 3.0, 3.0, 1, False),
                    ("bbbb", 1.0, 1.0, 1, False)]


def test_without_to_the_version_deployed_before_goes_back_and_forth() -> None:
    assert target(history("aaaa", "bbbb"), None).version == "aaaa"
    assert target(history("aaaa", "bbbb", "aaaa"), None).version == "bbbb"  # undo the undo
    assert target(history("aaaa", "bbbb", "bbbb"), None).version == "aaaa"  # a re-deploy is no version


def test_to_takes_a_unique_prefix() -> None:
    found = history("aa11", "ab22", "ac33")
    assert target(found, "ab").version == "ab22"
    assert target(found, "aa11").version == "aa11"
    several = r"'a' is the start of several versions of counter: ac33, ab22, aa11;"
    with pytest.raises(RollbackError, match=several):
        target(found, "a")


def test_refusals_name_the_versions_there_are() -> None:
    with pytest.raises(RollbackError, match=r"only one version deployed \(aaaa\)"):
        target(history("aaaa", "aaaa"), None)
    with pytest.raises(UnknownVersionError, match=r"its versions, newest first: bbbb, aaaa\."):
        target(history("aaaa", "bbbb"), "cc")
    with pytest.raises(RollbackError, match="counter is already at version bbbb"):
        target(history("aaaa", "bbbb"), "bb")


def test_other_partition_counts_get_a_new_layout_what_cannot_move_is_refused() -> None:
    now = manifest("bbbb", 1, (1, 2))
    assert check_layout(now, manifest("aaaa", 0, (1, 2, 2))).stages[1].prev is None
    wide = check_layout(now, manifest("aaaa", 0, (1, 4)))  # its state moves by key
    assert (wide.stages[1].base, wide.stages[1].prev, wide.stages[1].partitions) == (2, [0, 2], 4)
    with pytest.raises(RollbackError, match=r"cannot roll counter back to version aaaa: stage 0 "
                       r"\(s0\) is a source stage"):
        check_layout(now, manifest("aaaa", 0, (3, 2)))


def test_the_stored_artifact_must_be_the_one_deployed(tmp_path: Path) -> None:
    key = load_signing_key(generate_pair(tmp_path / "mine")[0])
    other = load_signing_key(generate_pair(tmp_path / "other")[0])
    artifact = b"pickled app"
    m = manifest(hashlib.sha256(artifact).hexdigest()[:16], 0)
    check_artifact(artifact, sign(artifact, m, key), key)
    check_artifact(artifact, sign(artifact, m, other), key)  # another key's: the content hash
    check_artifact(artifact, m, None)
    # Same content hash, other bytes: only the full signature can tell (here, forged by
    # changing the manifest's version to the swapped artifact's).
    swapped = b"other code"
    forged = dataclasses.replace(sign(artifact, m, key),
                                 version=hashlib.sha256(swapped).hexdigest()[:16])
    with pytest.raises(SignatureError, match="does not verify"):
        check_artifact(swapped, forged, key)
    with pytest.raises(ArtifactError, match="does not match its content hash"):
        check_artifact(swapped, sign(artifact, m, other), key)
