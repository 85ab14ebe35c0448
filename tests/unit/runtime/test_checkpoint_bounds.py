"""wallaroo_runtime.checkpoint: the commits held for the next segment are bounded in bytes
(so is the changelog nats-server keeps), and they are held in a file, not in the runner's
memory: a runner's memory follows its state, not how much data passed through it."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from pathlib import Path
from typing import cast

from checkpoint_support import Trims

from wallaroo.core.changelog import PartitionState
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats, Out
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.statestore import FileStore


class KeepsPuts(FileStore):
    """A file store that keeps a copy of what was put, on disk (pruning deletes a full
    snapshot's segments; in memory, the copies would be what a memory test measures)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / "store")
        self.copies = root / "copies"
        self.copies.mkdir()

    async def put(self, key: str, data: bytes) -> None:
        (self.copies / key.replace("/", "!")).write_bytes(data)
        await super().put(key, data)

    def put_under(self, folder: str) -> list[bytes]:
        """What was put under `folder`, in key order."""
        return [p.read_bytes() for p in sorted(self.copies.glob(folder.replace("/", "!") + "*"))]


def test_big_commits_snapshot_by_bytes_long_before_the_commit_count(tmp_path: Path) -> None:
    limit = 100_000
    trims = Trims()
    store = FileStore(tmp_path)
    cp = Checkpointer(cast(Nats, trims), CheckpointConfig(store=store, every=10_000, seconds=3600,
                                                          max_pending_bytes=limit),
                      "app", 1, 0, "LOG", "log.1.0", stateful=True)
    state = PartitionState()

    async def body() -> int:
        held = 0
        for n in range(1, 61):
            rec = CommitRecord(commit_no=n, first_seq=n, last_seq=n, watermarks={},
                               states={"count\x1fk": str(n).encode()},
                               outs=[Out("wl.app.out.o", b"x" * 10_000, f"s1.0:{n}:0")])
            state.apply(rec)
            encoded = rec.to_wire()  # its outputs make it heavy
            await cp.after_commit(encoded, state, n)
            held = max(held, cp.held_bytes)
            if cp.writing is not None:
                await cp.writing
        await cp.close()
        return held

    held = asyncio.run(body())
    assert held <= limit + 11_000  # at most one commit past the bound
    assert len(trims.below) >= 5  # about every 10 commits, not once in 10,000
    snaps = asyncio.run(store.list("snapshots/app/1/0/"))
    assert snaps, "no snapshot was written"


class Run:
    """200 commits of ~10 kB each (2 MB, below the snapshot's bound), then a snapshot."""

    def __init__(self, tmp_path: Path, segment_bytes: int) -> None:
        self.trims = Trims()
        self.store = KeepsPuts(tmp_path)
        self.cp = Checkpointer(cast(Nats, self.trims),
                               CheckpointConfig(store=self.store, every=10_000, seconds=3600,
                                                max_pending_bytes=64 << 20,
                                                segment_bytes=segment_bytes),
                               "app", 1, 0, "LOG", "log.1.0", stateful=True)
        self.sizes: list[int] = []
        self.digest = hashlib.sha256()
        self.held_at_most = 0
        self.grown = asyncio.run(self.commits())

    async def commits(self) -> int:
        """How much the traced Python heap grew while the 200 commits were held."""
        state = PartitionState()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(1, 201):
                rec = CommitRecord(n, n, n, {}, {"count\x1fk": str(n).encode()},
                                   [Out("wl.app.out.o", bytes([n % 256]) * 10_000, f"s1.0:{n}:0")])
                state.apply(rec)
                encoded = rec.to_wire()  # only the checkpointer may keep it: what it holds counts
                self.sizes.append(len(encoded))
                self.digest.update(encoded)
                await self.cp.after_commit(encoded, state, n)
                if self.cp.writing is not None:
                    await self.cp.writing  # (a runner's go on committing meanwhile)
                state.last = None  # (the worker's state holds only the newest record)
                self.held_at_most = max(self.held_at_most, self.cp.held)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert self.cp.since == (200, sum(self.sizes))
        await self.cp.checkpoint(state, 200)
        await self.cp.close()
        return grown

    def segments(self) -> list[list[bytes]]:
        segments = [snap.decode_segment(data) for data in self.store.put_under("segments/")]
        stored = [r for seg in segments for r in seg]
        assert [len(r) for r in stored] == self.sizes
        assert hashlib.sha256(b"".join(stored)).digest() == self.digest.digest()
        assert len(self.store.put_under("snapshots/")) == 1
        return segments


def test_the_commits_held_for_a_segment_are_not_in_the_runners_memory(tmp_path: Path) -> None:
    run = Run(tmp_path, segment_bytes=64 << 20)  # no segment before the snapshot
    assert run.held_at_most == 200
    assert run.grown < 300_000, f"holding 2 MB of commits grew the heap by {run.grown:,} bytes"
    assert len(run.segments()) == 1
    assert run.trims.below == [200]


def test_between_snapshots_segments_are_stored_and_the_changelog_trimmed(tmp_path: Path) -> None:
    run = Run(tmp_path, segment_bytes=400_000)
    segments = run.segments()
    assert len(segments) >= 5 and run.held_at_most < 60  # 2 MB in segments of 200-400 kB
    # Trimmed after each segment, and once more by the snapshot (at the same commit again
    # when the last segment happened to end at it: a purge below a seq is repeatable).
    assert len(segments) <= len(run.trims.below) <= len(segments) + 1
    assert run.trims.below == sorted(run.trims.below) and run.trims.below[-1] == 200
    assert len(set(run.trims.below)) >= len(segments)  # each segment trimmed further
