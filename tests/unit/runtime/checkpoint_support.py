"""What the checkpointer and snapshot tests share: the one NATS call a checkpointer makes on
its own, and snapshots of one partition made and stored by hand."""

from __future__ import annotations

import asyncio

from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.snapshot import Snapshot
from wallaroo_runtime.statestore import FileStore

APP, STAGE, PART = "counter", 1, 0


def full(commit_no: int, table: dict[str, bytes]) -> Snapshot:
    return Snapshot(APP, STAGE, PART, commit_no, commit_no, commit_no * 10, {"s0.0": commit_no},
                    dict(table), 1.0)


def delta(commit_no: int, base: int, changed: dict[str, bytes]) -> Snapshot:
    return Snapshot(APP, STAGE, PART, commit_no, commit_no, commit_no * 10, {"s0.0": commit_no},
                    dict(changed), 1.0, base)


def put(store: FileStore, *snapshots: Snapshot, key: bytes | None = None) -> None:
    for s in snapshots:
        asyncio.run(snap.write(store, s, [], key))


class Trims:
    """Stands in for Nats: records each trim of the changelog (below which sequence)."""

    def __init__(self) -> None:
        self.below: list[int] = []

    async def purge_subject_below(self, stream: str, subject: str, seq: int) -> None:
        self.below.append(seq)
