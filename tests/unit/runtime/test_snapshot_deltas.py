"""Incremental snapshots: a delta holds the keys changed since the snapshot before it, a
restore rolls the newest full snapshot forward through the deltas, and the checkpointer writes
deltas whose size follows the change rate, compacting into a full snapshot now and then."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest
from checkpoint_support import APP, PART, STAGE, Trims, delta, full, put

from wallaroo.core.changelog import PartitionState
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.statestore import FileStore


def chain(store: FileStore) -> snap.Chain:
    found = asyncio.run(snap.latest_chain(store, APP, STAGE, PART))
    assert found is not None
    return found


def test_a_big_table_round_trips_in_chunks() -> None:
    table = {f"k{i}": str(i).encode() for i in range(snap.CHUNK_KEYS * 2 + 7)}

    back = snap.decode(snap.encode(full(5, table)))

    assert back.table == table
    assert snap.decode(snap.encode(delta(6, 5, {"k1": b"x"}))).base == 5


def test_a_restore_rolls_the_full_snapshot_forward_through_its_deltas(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    put(store, full(3, {"a": b"1", "b": b"1"}), delta(6, 3, {"a": b"2"}),
        delta(10, 6, {"c": b"1", "a": b"3"}))

    found = chain(store)

    assert found.snapshot.table == {"a": b"3", "b": b"1", "c": b"1"}
    assert (found.snapshot.commit_no, found.snapshot.committed_seq, found.deltas) == (10, 100, 2)
    assert found.snapshot.watermarks == {"s0.0": 10} and not found.snapshot.is_delta
    assert asyncio.run(store.list(f"snapshots/{APP}/{STAGE}/{PART}/"))[-1].endswith("10.delta")


def test_a_delta_over_an_earlier_commit_still_gives_its_own_state(tmp_path: Path) -> None:
    # Two writers (an old owner still finishing its snapshot, the new one) may base their
    # deltas on different snapshots; each holds every key changed since its base.
    store = FileStore(tmp_path)
    put(store, full(3, {"a": b"1"}), delta(6, 3, {"a": b"2"}), delta(10, 3, {"a": b"4", "b": b"1"}))

    assert chain(store).snapshot.table == {"a": b"4", "b": b"1"}


def test_a_corrupt_delta_ends_the_roll_and_the_segments_bridge_it(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    put(store, full(3, {"a": b"1"}), delta(6, 3, {"a": b"2"}))
    records = [CommitRecord(n, n, n, {}, {"a": str(n).encode()}, []).to_wire() for n in range(7, 11)]
    asyncio.run(snap.write(store, delta(10, 6, {"a": b"10"}), records))
    newest = tmp_path / snap.snapshot_key(APP, STAGE, PART, 10, delta=True)
    newest.write_bytes(newest.read_bytes()[:-5])

    found = chain(store)

    assert (found.snapshot.commit_no, found.snapshot.table) == (6, {"a": b"2"})
    bridged = asyncio.run(snap.segments_after(store, APP, STAGE, PART, 6))
    assert [rec.commit_no for rec, _ in bridged] == [7, 8, 9, 10]


def test_a_delta_past_a_gap_is_not_applied(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    put(store, full(3, {"a": b"1"}), delta(10, 6, {"b": b"1"}))

    assert chain(store).snapshot.commit_no == 3


def test_a_delta_stored_under_a_full_snapshots_name_is_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    put(store, full(3, {"a": b"1"}))
    forged = tmp_path / snap.snapshot_key(APP, STAGE, PART, 6)
    forged.write_bytes(snap.encode(delta(6, 3, {"b": b"1"})))

    assert chain(store).snapshot.commit_no == 3


def test_prune_keeps_the_deltas_after_the_oldest_kept_full_snapshot(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    put(store, full(3, {"a": b"1"}), delta(6, 3, {"a": b"2"}), full(10, {"a": b"3"}),
        delta(10, 6, {"a": b"3"}), delta(12, 10, {"a": b"4"}), full(20, {"a": b"5"}),
        delta(25, 20, {"a": b"6"}))

    deleted = asyncio.run(snap.prune(store, APP, STAGE, PART, keep=2))

    key = snap.snapshot_key
    assert sorted(deleted) == sorted([key(APP, STAGE, PART, 3), key(APP, STAGE, PART, 6, True),
                                      key(APP, STAGE, PART, 10, True)])
    assert chain(store).snapshot.table == {"a": b"6"}


def drive(tmp_path: Path, keys: int, commits: int, max_deltas: int = 64
          ) -> tuple[FileStore, PartitionState]:
    """A stateful partition with `keys` keys after its first commit, then `commits` commits
    of 3 keys each, every commit snapshotted."""
    store = FileStore(tmp_path)
    cp = Checkpointer(cast(Nats, Trims()), CheckpointConfig(store=store, every=1, seconds=3600,
                                                          max_deltas=max_deltas),
                      APP, STAGE, PART, "LOG", "log.1.0", stateful=True)
    state = PartitionState()

    async def body() -> None:
        for n in range(1, commits + 2):
            changed = ({f"k{i}": b"0" * 20 for i in range(keys)} if n == 1
                       else {f"k{(n * 3 + j) % keys}": str(n).encode() for j in range(3)})
            state.apply(CommitRecord(n, n, n, {}, changed, []))
            cp.threshold = 1
            await cp.after_commit(state.last.to_wire(), state, n)  # type: ignore[union-attr]
            if cp.writing is not None:
                await cp.writing  # one snapshot at a time, in order

    asyncio.run(body())
    return store, state


def sizes(store: FileStore, suffix: str) -> list[int]:
    folder = store.root / "snapshots" / APP / str(STAGE) / str(PART)
    return [p.stat().st_size for p in sorted(folder.glob(f"*.{suffix}"))]


def test_snapshots_after_the_first_hold_only_what_changed(tmp_path: Path) -> None:
    store, state = drive(tmp_path, keys=20_000, commits=30)

    fulls, deltas = sizes(store, "snap"), sizes(store, "delta")
    assert len(fulls) == 1 and len(deltas) == 30
    assert max(deltas) * 100 < fulls[0]  # 3 keys changed, not 20,000 written again
    assert chain(store).snapshot.table == state.table


def test_deltas_are_compacted_into_a_full_snapshot(tmp_path: Path) -> None:
    store, state = drive(tmp_path, keys=500, commits=30, max_deltas=8)

    assert len(sizes(store, "snap")) == 2  # prune keeps the newest two full snapshots
    found = chain(store)
    assert found.deltas <= 8 and found.snapshot.table == state.table


@pytest.mark.parametrize("keys", [3, 50])
def test_small_states_compact_when_their_deltas_outweigh_them(tmp_path: Path, keys: int) -> None:
    store, state = drive(tmp_path, keys=keys, commits=12)

    found = chain(store)
    assert found.delta_bytes < 2 * found.full_bytes + 200
    assert found.snapshot.table == state.table
