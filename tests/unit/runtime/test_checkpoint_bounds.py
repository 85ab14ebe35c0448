"""wallaroo_runtime.checkpoint: the commits held for the next segment are bounded in bytes,
so a runner's memory follows its state, not how much data passed through it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from wallaroo.core.changelog import PartitionState
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats, Out
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.statestore import FileStore


class Trims:
    """The one NATS call a checkpointer makes: trimming the changelog below a sequence."""

    def __init__(self) -> None:
        self.below: list[int] = []

    async def purge_subject_below(self, stream: str, subject: str, seq: int) -> None:
        self.below.append(seq)


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
            held = max(held, cp.pending_bytes)
            if cp.writing is not None:
                await cp.writing
        await cp.close()
        return held

    held = asyncio.run(body())
    assert held <= limit + 11_000  # at most one commit past the bound
    assert len(trims.below) >= 5  # about every 10 commits, not once in 10,000
    snaps = asyncio.run(store.list("snapshots/app/1/0/"))
    assert snaps, "no snapshot was written"
