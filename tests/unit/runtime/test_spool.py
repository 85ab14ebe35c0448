"""wallaroo_runtime.spool: commit records held for a segment, in an unlinked file; and the
checkpointer's answer when one cannot be read back (the partition restarts from its
changelog, which nothing trimmed)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import cast

import pytest
from checkpoint_support import Trims

from wallaroo.core.changelog import PartitionState
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer, SpoolLostError
from wallaroo_runtime.spool import Spool
from wallaroo_runtime.statestore import FileStore


def test_records_come_back_in_order_from_a_file_no_one_else_can_open() -> None:
    spool = Spool()
    records = [bytes([i]) * (i * 1000 + 1) for i in range(20)] + [b""]
    for no, record in enumerate(records, 1):
        spool.add(record, no)
    assert len(spool) == 21 and spool.nos == list(range(1, 22))
    assert spool.bytes == sum(map(len, records))
    file = spool._file
    assert file is not None and os.fstat(file.fileno()).st_nlink == 0  # unlinked: no name on disk
    assert spool.read() == records
    assert spool.read() == records  # again: a failed write's next attempt reads them again
    spool.add(b"later", 22)
    assert spool.read() == [*records, b"later"]
    spool.discard()
    assert file.closed and spool.read() == []


def test_spools_join_into_one_file_in_order() -> None:
    first, empty, second = Spool(), Spool(), Spool()
    first.add(b"a", 1)
    first.add(b"bb", 2)
    second.add(b"ccc", 3)

    joined = Spool.joined([first, empty, second])

    assert joined.read() == [b"a", b"bb", b"ccc"] and joined.nos == [1, 2, 3] and joined.bytes == 6
    assert first.read() == [b"a", b"bb"]  # the parts are left as they were


def test_without_a_store_nothing_is_held_and_commits_are_counted(tmp_path: Path) -> None:
    """A stateless stage with no state store trims by its snapshot schedule, without a
    segment: it holds no records (no file) but counts them towards that schedule."""
    trims = Trims()
    cp = Checkpointer(cast(Nats, trims), CheckpointConfig(store=None, every=10_000, seconds=3600),
                      "app", 0, 0, "LOG", "log.0.0", stateful=False)
    state = PartitionState()

    async def body() -> None:
        for n in (1, 2):
            state.apply(CommitRecord(n, n, n, {}, {}, []))
            assert state.last is not None
            await cp.after_commit(state.last.to_wire(), state, n)
        assert cp.held == 0 and cp.spool._file is None and cp.since[0] == 2
        cp.threshold = 2
        assert cp.due()
        await cp.checkpoint(state, 2)

    asyncio.run(body())
    assert trims.below == [2] and cp.since == (0, 0)


def test_discard_closes_the_file() -> None:
    spool = Spool()
    spool.add(b"abc", 1)
    file = spool._file
    spool.discard()
    assert file is not None and file.closed


class Unreadable(Spool):
    def read(self) -> list[bytes]:
        raise OSError(5, "Input/output error")


def test_a_spool_that_cannot_be_read_back_stops_the_partition_and_trims_nothing(tmp_path: Path) -> None:
    trims = Trims()
    cp = Checkpointer(cast(Nats, trims), CheckpointConfig(store=FileStore(tmp_path), every=10_000,
                                                          seconds=3600),
                      "app", 1, 0, "LOG", "log.1.0", stateful=True)
    cp.spool = Unreadable()
    state = PartitionState()

    def commit(n: int) -> bytes:
        state.apply(CommitRecord(n, n, n, {}, {f"k{n}": b"1"}, []))
        assert state.last is not None
        return state.last.to_wire()

    async def body() -> None:
        await cp.after_commit(commit(1), state, 1)
        await cp.checkpoint(state, 1)
        assert cp.writing is not None
        await cp.writing
        with pytest.raises(SpoolLostError, match="log.1.0: the commits held .* restarts from its changelog"):
            await cp.after_commit(commit(2), state, 2)
        with pytest.raises(SpoolLostError):  # nor when idle: no later delta may miss k1
            await cp.checkpoint(state, 2)
        assert "k1" in cp.dirty

    asyncio.run(body())
    assert trims.below == []
    assert not (tmp_path / "snapshots").exists()
