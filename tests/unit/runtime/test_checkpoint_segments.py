"""wallaroo_runtime.checkpoint: the segment stored with a snapshot covers exactly the commits
since the one before, by the numbers the checkpointer kept (records are not decoded again),
also after a failed write; and partitions do not all reach the byte bound together."""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from checkpoint_support import Trims

from wallaroo.core.changelog import PartitionState
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats, Out
from wallaroo.nats.protocol import StoredMsg
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.snapshot import COMMIT_EPOCH
from wallaroo_runtime.statestore import FileStore

APP, STAGE, PART = "counter", 1, 0


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


def live(cp: Checkpointer, state: PartitionState, numbers: range, threshold: int | None = None
         ) -> None:
    """Commit `numbers` in turn, each snapshot or segment written before the next commit
    (`threshold`: the snapshot's commit count, held still)."""
    async def body() -> None:
        for n in numbers:
            if threshold is not None:
                cp.threshold = threshold
            await cp.after_commit(commit(state, n), state, n)
            await written(cp)

    asyncio.run(body())


def commit(state: PartitionState, n: int) -> bytes:
    state.apply(CommitRecord(n, n, n, {}, {f"k{n}": str(n).encode()}, []))
    assert state.last is not None
    return state.last.to_wire()


def test_a_failed_snapshot_leaves_its_commits_to_the_next_segment(tmp_path: Path) -> None:
    store = FailsOnce(tmp_path)
    cp = checkpointer(store, every=1, retry_after=0)
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

    live(cp, state, range(1, 16), threshold=10)
    again = checkpointer(FileStore(tmp_path), every=10, segment_bytes=60)
    restored = asyncio.run(again.restore(0))  # the changelog is gone
    jumped = restored.commit_no
    assert jumped > COMMIT_EPOCH and again.held == 0

    live(again, restored, range(jumped + 1, jumped + 11), threshold=10)
    assert again.failures == 0
    assert asyncio.run(checkpointer(FileStore(tmp_path)).restore(0)).table == restored.table


def test_a_failed_store_is_not_asked_again_before_retry_after(tmp_path: Path) -> None:
    """While S3 is down, commits go on without a write tried at each one: the records wait,
    counted (not summed anew per commit), and the next write covers them all."""
    store = FailsOnce(tmp_path)
    cp = checkpointer(store, every=1, retry_after=3600)
    state = PartitionState()

    async def body() -> None:
        for n in range(1, 21):
            cp.threshold = 1
            await cp.after_commit(commit(state, n), state, n)
            await written(cp)
        assert cp.failures == 1 and not cp.due()
        assert cp.held == 20 and cp.held_bytes == sum(s.bytes for s in cp.back) + cp.spool.bytes > 0
        cp.retry_at = 0.0  # retry_after has passed
        assert cp.due()
        await cp.checkpoint(state, 20)
        await written(cp)

    asyncio.run(body())
    assert store.written == [snap.segment_key(APP, STAGE, PART, 1, 20),
                             snap.snapshot_key(APP, STAGE, PART, 20)]


def test_segments_stored_alone_after_a_restore_from_the_store_alone_restore_again(
        tmp_path: Path) -> None:
    """Killed again before its next snapshot: the segments after the commit-number jump
    join those before it, and the store alone restores every commit they hold."""
    cp = checkpointer(FileStore(tmp_path), every=10, segment_bytes=60)
    state = PartitionState()

    live(cp, state, range(1, 16), threshold=10)
    again = checkpointer(FileStore(tmp_path), every=10_000, segment_bytes=1)
    restored = asyncio.run(again.restore(0))
    jumped = restored.commit_no

    live(again, restored, range(jumped + 1, jumped + 6))  # a segment each, no snapshot
    third = asyncio.run(checkpointer(FileStore(tmp_path)).restore(0))
    assert third.table == restored.table
    assert {f"k{n}" for n in range(jumped + 1, jumped + 6)} <= set(third.table)


def test_segments_stored_before_a_first_snapshot_are_restored(tmp_path: Path) -> None:
    """A partition that stored segments (and trimmed its changelog) before any snapshot:
    its restore reads them, or the commits they hold would be missing."""
    cp = checkpointer(FileStore(tmp_path), every=10_000, segment_bytes=1)
    state = PartitionState()

    live(cp, state, range(1, 6))
    assert asyncio.run(FileStore(tmp_path).list(f"snapshots/{APP}/")) == []
    restored = asyncio.run(checkpointer(FileStore(tmp_path)).restore(0))
    assert restored.table == state.table and restored.commit_no == 5 + COMMIT_EPOCH


class Changelog(Trims):
    """Trims, and a changelog to read: commit n's record at seq n."""

    def __init__(self, records: dict[int, bytes]) -> None:
        super().__init__()
        self.records = records

    async def read_subject(self, stream: str, subject: str, upto: int, start: int = 1,
                           complete: bool = False) -> AsyncIterator[StoredMsg]:
        for seq in range(start, upto + 1):
            yield StoredMsg(seq, subject, self.records[seq], f"c:{seq}")


def test_a_restore_holds_only_what_no_stored_segment_has(tmp_path: Path) -> None:
    """The records read back from stored segments are not held for the next segment (it
    would store them again); the changelog's after them are, and every one counts towards
    the next snapshot. The segments then join up: the store alone restores everything."""
    cp = checkpointer(FileStore(tmp_path), every=10, segment_bytes=60)
    state = PartitionState()
    records: dict[int, bytes] = {}

    async def body(cp: Checkpointer, numbers: range) -> None:
        for n in numbers:
            cp.threshold = 10
            records[n] = commit(state, n)
            await cp.after_commit(records[n], state, n)
            await written(cp)

    asyncio.run(body(cp, range(1, 16)))  # a snapshot at 10, segments after it
    segments = asyncio.run(FileStore(tmp_path).list(f"segments/{APP}/{STAGE}/{PART}/"))
    last_stored = max(int(k.rsplit("-", 1)[1].split(".")[0]) for k in segments)
    assert 10 < last_stored <= 15
    again = Checkpointer(cast(Nats, Changelog(records)),
                         CheckpointConfig(store=FileStore(tmp_path), seconds=3600, every=10,
                                          segment_bytes=60),
                         APP, STAGE, PART, "LOG", "log.1.0", stateful=True)
    restored = asyncio.run(again.restore(15))
    assert restored.table == state.table and restored.commit_no == 15
    assert again.held == 15 - last_stored and again.spool.nos == list(range(last_stored + 1, 16))
    assert again.since[0] == 15 - 10

    # Read only (a migration reading an old partition): the same state, nothing held.
    reader = Checkpointer(cast(Nats, Changelog(records)), CheckpointConfig(store=FileStore(tmp_path)),
                          APP, STAGE, PART, "LOG", "log.1.0", stateful=True)
    read = asyncio.run(reader.restore(15, read_only=True))
    assert read.table == state.table and read.commit_no == 15
    assert (reader.held, reader.held_bytes, reader.dirty) == (0, 0, {})

    state = restored
    asyncio.run(body(again, range(16, 31)))
    assert again.failures == 0
    alone = asyncio.run(checkpointer(FileStore(tmp_path)).restore(0))
    assert alone.table == state.table


class Down(FileStore):
    """A store that is down: every write fails."""

    async def put(self, key: str, data: bytes) -> None:
        raise OSError("store unavailable")


async def traced_memory_below(bound: int, timeout: float = 10.0) -> int:
    """Traced memory once it is under `bound` (or at the deadline). Why wait at all: a read
    in a worker thread hands its result over before the thread lets go of it (its frame
    holds it until the call returns), which on a loaded machine is a while later."""
    deadline = time.monotonic() + timeout
    while (now := tracemalloc.get_traced_memory()[0]) >= bound and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return now


def test_records_of_failed_writes_wait_in_one_file_not_in_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An outage of hours: every retry fails and gives its records back. They stay in one
    file per partition (joined), the process's memory does not grow with them, and the
    write after the outage stores every one of them."""
    # (pytest keeps the warnings' records, and through their exceptions the failed writes'
    # frames: not what a runner's log handler does)
    caplog.set_level(logging.ERROR, logger="wallaroo.checkpoint")
    cp = checkpointer(Down(tmp_path), every=1, retry_after=0)
    state = PartitionState()
    big = b"x" * 100_000  # each commit record carries ~100 kB of outputs

    async def body() -> None:
        tracemalloc.start()
        try:
            for n in range(1, 41):
                state.apply(CommitRecord(n, n, n, {}, {"k": b"1"}, [Out("out", big, f"o{n}")]))
                cp.threshold = 1
                await cp.after_commit(state.last.to_wire(), state, n)  # type: ignore[union-attr]
                await written(cp)
            held_in_memory = await traced_memory_below(1_000_000)
        finally:
            tracemalloc.stop()
        assert cp.failures >= 39 and cp.held == 40 and cp.held_bytes > 4_000_000
        assert len(cp.back) == 1  # one file, however many retries
        assert held_in_memory < 1_000_000  # not the 4 MB of records
        cp.cfg = replace(cp.cfg, store=back)  # the store is back
        await cp.checkpoint(state, 40)
        await written(cp)

    back = FailsOnce(tmp_path)
    back.failed = True  # (does not fail)
    asyncio.run(body())
    assert cp.held == 0 and not cp.back
    assert back.written[0] == snap.segment_key(APP, STAGE, PART, 1, 40)  # every commit held


def test_snapshot_now_writes_a_commit_once_and_waits_for_it(tmp_path: Path) -> None:
    """A migration stores its moved state before it says MIGRATED: snapshot_now writes a
    snapshot of the commit and waits for it, but never a second one of a commit the store
    has (an empty delta over a stored delta would cut the chain there)."""
    store = FileStore(tmp_path)
    cp = checkpointer(store, every=1)
    state = PartitionState()
    folder = f"snapshots/{APP}/{STAGE}/{PART}/"

    async def stored() -> dict[str, bytes | None]:
        return {k: await store.get(k) for k in await store.list(folder)}

    async def body() -> None:
        for n in (1, 2, 3):  # a full snapshot, then deltas
            cp.threshold = 1
            await cp.after_commit(commit(state, n), state, n)
            await written(cp)
        before = await stored()
        assert await cp.snapshot_now(state, 3)
        assert await stored() == before  # commit 3 was stored already: nothing rewritten
        cp.threshold = 100  # commit 4 is not due by count: snapshot_now writes it
        await cp.after_commit(commit(state, 4), state, 4)
        assert await cp.snapshot_now(state, 4)
        latest = await snap.latest_valid(store, APP, STAGE, PART)
        assert latest is not None and latest.commit_no == 4 and latest.table == state.table

    asyncio.run(body())
