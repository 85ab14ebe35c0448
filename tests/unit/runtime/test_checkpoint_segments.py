"""wallaroo_runtime.checkpoint: the segment stored with a snapshot covers exactly the commits
since the one before, by the numbers the checkpointer kept (records are not decoded again),
also after a failed write; and partitions do not all reach the byte bound together."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from wallaroo.core.changelog import PartitionState
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.statestore import FileStore

APP, STAGE, PART = "counter", 1, 0


class Trims:
    async def purge_subject_below(self, stream: str, subject: str, seq: int) -> None:
        return None


class FailsOnce(FileStore):
    """A store whose first write fails (S3 down for a moment); it keeps the keys written."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failed = False
        self.written: list[str] = []

    async def put(self, key: str, data: bytes) -> None:
        if not self.failed:
            self.failed = True
            raise OSError("store unavailable")
        self.written.append(key)
        await super().put(key, data)


def checkpointer(store: FileStore, **cfg: int) -> Checkpointer:
    return Checkpointer(cast(Nats, Trims()), CheckpointConfig(store=store, seconds=3600, **cfg),
                        APP, STAGE, PART, "LOG", "log.1.0", stateful=True)


def commit(state: PartitionState, n: int) -> bytes:
    state.apply(CommitRecord(n, n, n, {}, {f"k{n}": str(n).encode()}, []))
    assert state.last is not None
    return state.last.to_wire()


def test_a_failed_snapshot_leaves_its_commits_to_the_next_segment(tmp_path: Path) -> None:
    store = FailsOnce(tmp_path)
    cp = checkpointer(store, every=1)
    state = PartitionState()

    async def body() -> None:
        for n in (1, 2, 3):
            cp.threshold = 1
            await cp.after_commit(commit(state, n), state, n)
            await cp.close()

    asyncio.run(body())

    assert cp.failures == 1
    segments = [k for k in store.written if k.startswith("segments/")]
    assert segments == [snap.segment_key(APP, STAGE, PART, 1, 2),
                        snap.segment_key(APP, STAGE, PART, 3, 3)]
    restored = asyncio.run(checkpointer(FileStore(tmp_path)).restore(0))  # the store alone
    assert restored.table == state.table


def test_partitions_draw_their_byte_bounds_apart(tmp_path: Path) -> None:
    limit = 1_000_000
    bounds = {checkpointer(FileStore(tmp_path), max_pending_bytes=limit).byte_threshold
              for _ in range(20)}

    assert len(bounds) > 1
    assert all(limit // 2 <= b <= limit for b in bounds)
