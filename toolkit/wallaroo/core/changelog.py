"""A partition's changelog: its commit records (wallaroo.core.wire.CommitRecord), what an owner
knows after replaying them, and the seam to snapshots (`Checkpoints`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from wallaroo.core.wire import CommitRecord
from wallaroo.nats.protocol import WorkerNats


@dataclass
class PartitionState:
    """What a partition owner knows after replaying its changelog."""

    table: dict[str, bytes] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)
    committed_seq: int = 0
    commit_no: int = 0
    last: CommitRecord | None = None

    def apply(self, rec: CommitRecord) -> None:
        self.table.update(rec.states)
        self.watermarks.update(rec.watermarks)
        self.committed_seq = max(self.committed_seq, rec.last_seq)
        self.commit_no = rec.commit_no
        self.last = rec

    @classmethod
    def replay(cls, records: Iterable[CommitRecord]) -> PartitionState:
        st = cls()
        for rec in records:
            st.apply(rec)
        return st


class Checkpoints(Protocol):
    """Where a partition's state is restored from and snapshotted to. The runner's is
    wallaroo_runtime.checkpoint.Checkpointer (S3 or file snapshots, changelog trimming)."""

    @property
    def restored_from(self) -> int | None:
        """Commit number of the snapshot the last restore started from (None: no snapshot)."""
        ...

    async def restore(self, last_seq: int) -> PartitionState: ...

    def due(self) -> bool: ...

    async def after_commit(self, encoded: bytes, state: PartitionState, log_seq: int) -> None: ...

    async def checkpoint(self, state: PartitionState, log_seq: int) -> None: ...

    @property
    def stores(self) -> bool:
        """Are snapshots written to a state store?"""
        ...

    async def snapshot_now(self, state: PartitionState, log_seq: int) -> bool:
        """Write a snapshot of `state` now and wait for it: did the store take it?"""
        ...

    async def close(self) -> None: ...


@dataclass
class ChangelogOnly:
    """No snapshots: state is the replay of the whole changelog, which is never trimmed."""

    nats: WorkerNats
    log_stream: str
    log_subject: str
    restored_from: int | None = None

    async def restore(self, last_seq: int) -> PartitionState:
        msgs = self.nats.read_subject(self.log_stream, self.log_subject, last_seq, complete=True)
        return PartitionState.replay([CommitRecord.from_wire(m.data) async for m in msgs])

    def due(self) -> bool:
        return False

    async def after_commit(self, encoded: bytes, state: PartitionState, log_seq: int) -> None:
        return None

    async def checkpoint(self, state: PartitionState, log_seq: int) -> None:
        return None

    @property
    def stores(self) -> bool:
        return False

    async def snapshot_now(self, state: PartitionState, log_seq: int) -> bool:
        return False

    async def close(self) -> None:
        return None
