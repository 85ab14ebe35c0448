"""wallaroo_runtime.checkpoint: the commits held for the next segment are bounded in bytes
(so is the changelog nats-server keeps), and they are held in a file, not in the runner's
memory: a runner's memory follows its state, not how much data passed through it."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path
from typing import cast

from wallaroo.core.changelog import PartitionState
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats, Out
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.statestore import FileStore


class Trims:
    """The one NATS call a checkpointer makes: trimming the changelog below a sequence."""

    def __init__(self) -> None:
        self.below: list[int] = []

    async def purge_subject_below(self, stream: str, subject: str, seq: int) -> None:
        self.below.append(seq)


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


def test_commits_are_held_outside_memory_and_stored_as_segments_between_snapshots(
        tmp_path: Path) -> None:
    """2 MB of commit records (below the snapshot's bound) grow Python's heap by a fraction
    of that; segments of about `segment_bytes` are stored and the changelog trimmed after
    each, without a snapshot; all segments together hold every record, in order."""
    trims = Trims()
    store = KeepsPuts(tmp_path)
    cp = Checkpointer(cast(Nats, trims), CheckpointConfig(store=store, every=10_000, seconds=3600,
                                                          max_pending_bytes=64 << 20,
                                                          segment_bytes=400_000),
                      "app", 1, 0, "LOG", "log.1.0", stateful=True)
    state = PartitionState()
    encoded = []

    async def body() -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(1, 201):
                rec = CommitRecord(n, n, n, {}, {"count\x1fk": str(n).encode()},
                                   [Out("wl.app.out.o", bytes([n % 256]) * 10_000, f"s1.0:{n}:0")])
                state.apply(rec)
                encoded.append(rec.to_wire())
                await cp.after_commit(encoded[-1], state, n)
                if cp.writing is not None:
                    await cp.writing  # (a runner's go on committing meanwhile)
            grown = tracemalloc.get_traced_memory()[0] - before - sum(map(len, encoded))
        finally:
            tracemalloc.stop()
        assert cp.held < 60 and cp.since == (200, sum(map(len, encoded)))
        await cp.checkpoint(state, 200)
        await cp.close()
        return grown

    grown = asyncio.run(body())
    assert grown < 300_000, f"holding 2 MB of commits grew the heap by {grown:,} bytes"
    segments = [snap.decode_segment(data) for data in store.put_under("segments/")]
    assert len(segments) >= 5  # 2 MB in segments of 200-400 kB
    assert [r for seg in segments for r in seg] == encoded
    assert len(store.put_under("snapshots/")) == 1
    # Trimmed after each segment (and once more by the snapshot, which may have had none).
    assert len(segments) <= len(trims.below) <= len(segments) + 1
    assert trims.below == sorted(set(trims.below)) and trims.below[-1] == 200
