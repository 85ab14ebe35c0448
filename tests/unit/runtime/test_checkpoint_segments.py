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
from wallaroo_runtime.checkpoint import COMMIT_EPOCH, CheckpointConfig, Checkpointer
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


async def written(cp: Checkpointer) -> None:
    if cp.writing is not None:
        await cp.writing


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
            await written(cp)

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


def test_a_restore_reads_the_segments_stored_between_snapshots(tmp_path: Path) -> None:
    """Segments stored on their own after the newest snapshot carry the state past it: the
    store alone restores every commit they cover."""
    store = FileStore(tmp_path)
    cp = checkpointer(store, every=10, segment_bytes=60)
    state = PartitionState()

    async def body() -> None:
        for n in range(1, 26):
            cp.threshold = 10  # snapshots at 10 and 20; segments of a few commits between
            await cp.after_commit(commit(state, n), state, n)
            await written(cp)

    asyncio.run(body())
    segments = asyncio.run(store.list(f"segments/{APP}/{STAGE}/{PART}/"))
    last_stored = max(int(k.rsplit("-", 1)[1].split(".")[0]) for k in segments)
    assert 20 < last_stored <= 25
    restored = asyncio.run(checkpointer(FileStore(tmp_path)).restore(0))  # the store alone
    assert restored.commit_no - COMMIT_EPOCH == last_stored
    assert restored.table == {f"k{n}": str(n).encode() for n in range(1, last_stored + 1)}


def test_after_a_restore_from_the_store_alone_the_next_snapshot_is_written(tmp_path: Path) -> None:
    """The commit number jumps past the lost changelog's; the segments read are not held for
    the next segment (its commits must follow each other), so the next snapshot is stored."""
    cp = checkpointer(FileStore(tmp_path), every=10, segment_bytes=60)
    state = PartitionState()

    async def first_life() -> None:
        for n in range(1, 16):
            cp.threshold = 10
            await cp.after_commit(commit(state, n), state, n)
            await written(cp)

    asyncio.run(first_life())
    again = checkpointer(FileStore(tmp_path), every=10, segment_bytes=60)
    restored = asyncio.run(again.restore(0))  # the changelog is gone
    jumped = restored.commit_no
    assert jumped > COMMIT_EPOCH and again.held == 0

    async def second_life() -> None:
        for n in range(jumped + 1, jumped + 11):
            again.threshold = 10
            await again.after_commit(commit(restored, n), restored, n)
            await written(again)

    asyncio.run(second_life())
    assert again.failures == 0
    assert asyncio.run(checkpointer(FileStore(tmp_path)).restore(0)).table == restored.table
