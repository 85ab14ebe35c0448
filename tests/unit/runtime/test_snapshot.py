"""wallaroo_runtime.snapshot: snapshots and segments round-trip, damage is caught on reading,
and a partition's newest valid snapshot plus the segments after it rebuild its state."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from wallaroo.core.changelog import PartitionState
from wallaroo.core.errors import WallarooError
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Out
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.snapshot import CorruptSnapshotError, Snapshot
from wallaroo_runtime.statestore import FileStore

APP, STAGE, PART = "word_count", 1, 3


def make(commit_no: int, **table: bytes) -> Snapshot:
    return Snapshot(APP, STAGE, PART, commit_no=commit_no, log_seq=commit_no * 2,
                    committed_seq=commit_no * 10, watermarks={"s0.3": commit_no},
                    table=table or {"count\x1fhello": b"\x80\x05state"}, created=1700000000.5)


def rec(n: int) -> bytes:
    return CommitRecord(commit_no=n, first_seq=n * 10 - 9, last_seq=n * 10, watermarks={"s0.3": n},
                        states={f"k{n}": f"v{n}".encode()},
                        outs=[Out("wl.a.out.o", b"p", f"s1.3:{n}:0")]).to_wire()


def numbers(records: list[tuple[CommitRecord, bytes]]) -> list[int]:
    """The commit numbers segments_after found, each checked against its bytes."""
    assert all(CommitRecord.from_wire(raw) == rec for rec, raw in records)
    return [rec.commit_no for rec, _ in records]


async def write_history(store: FileStore, *snapshot_commits: int) -> None:
    """Snapshots at the given commits, each with the segment since the one before."""
    previous = 0
    for n in snapshot_commits:
        await snap.write(store, make(n), [rec(i) for i in range(previous + 1, n + 1)])
        previous = n


# --- format -------------------------------------------------------------------------------


def test_round_trip() -> None:
    s = make(42, a=b"\x00\xff", b=b"")

    assert snap.decode(snap.encode(s)) == s
    assert snap.decode_segment(snap.encode_segment([rec(1), rec(2)])) == [rec(1), rec(2)]


def test_every_flipped_byte_is_caught() -> None:
    data = snap.encode(make(7))

    for i in range(len(data)):
        damaged = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
        with pytest.raises(CorruptSnapshotError):
            snap.decode(damaged)


def test_a_flipped_body_byte_fails_the_checksum() -> None:
    data = bytearray(snap.encode(make(7)))
    data[-20] ^= 0xFF  # the body is the envelope's last field

    with pytest.raises(CorruptSnapshotError, match="sha256 checksum") as err:
        snap.decode(bytes(data), "snapshot s/1.snap")

    assert isinstance(err.value, WallarooError) and isinstance(err.value, ValueError)
    assert str(err.value).startswith("snapshot s/1.snap ")


@pytest.mark.parametrize("cut", [0, 1, 10, -1])
def test_truncated_data_is_caught(cut: int) -> None:
    data = snap.encode(make(7))

    with pytest.raises(CorruptSnapshotError, match="truncated"):
        snap.decode(data[:cut])


def test_a_wrong_version_names_both_versions() -> None:
    envelope = msgpack.unpackb(snap.encode(make(7)))
    envelope["v"] = snap.FORMAT_VERSION + 1

    with pytest.raises(CorruptSnapshotError, match=f"version {snap.FORMAT_VERSION + 1}, this runner reads"):
        snap.decode(msgpack.packb(envelope))


def test_a_segment_is_not_a_snapshot() -> None:
    with pytest.raises(CorruptSnapshotError, match="is not a wallaroo-snapshot"):
        snap.decode(snap.encode_segment([rec(1)]))


KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def reseal(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """`data` with its body changed by `change` and the checksum recomputed, as someone who can
    write the store but holds no state key would do it."""
    envelope = msgpack.unpackb(data)
    body = msgpack.unpackb(envelope["body"])
    change(body)
    envelope["body"] = msgpack.packb(body, use_bin_type=True)
    envelope["sha256"] = hashlib.sha256(envelope["body"]).digest()
    return bytes(msgpack.packb(envelope, use_bin_type=True))


def test_with_a_state_key_a_resealed_snapshot_is_refused_by_its_mac() -> None:
    original = make(7, a=b"mine")
    forged = reseal(snap.encode(original, KEY), lambda b: b.update(table=[msgpack.packb({"a": b"yours"})]))

    assert snap.decode(forged).table == {"a": b"yours"}  # the checksum alone is fooled
    with pytest.raises(CorruptSnapshotError, match="fails its MAC check"):
        snap.decode(forged, "snapshot s/7.snap", KEY)
    assert snap.decode(snap.encode(original, KEY), state_key=KEY) == original


def test_with_a_state_key_a_snapshot_without_a_mac_or_with_another_key_is_refused() -> None:
    with pytest.raises(CorruptSnapshotError, match="carries no MAC"):
        snap.decode(snap.encode(make(7)), state_key=KEY)
    with pytest.raises(CorruptSnapshotError, match="fails its MAC check"):
        snap.decode(snap.encode(make(7), OTHER_KEY), state_key=KEY)


def test_a_segment_mac_does_not_pass_for_a_snapshot() -> None:
    """The MAC covers the kind: a sealed segment body relabelled as a snapshot fails it."""
    envelope = msgpack.unpackb(snap.encode_segment([rec(1)], KEY))
    envelope["kind"] = snap.SNAPSHOT_KIND

    with pytest.raises(CorruptSnapshotError, match="fails its MAC check"):
        snap.decode(msgpack.packb(envelope), state_key=KEY)


def test_segments_carry_a_mac_too() -> None:
    forged = reseal(snap.encode_segment([rec(1), rec(2)], KEY), lambda b: b.pop())

    assert snap.decode_segment(forged) == [rec(1)]
    with pytest.raises(CorruptSnapshotError, match="fails its MAC check"):
        snap.decode_segment(forged, state_key=KEY)


def test_latest_valid_skips_a_forged_snapshot_for_the_one_before(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileStore(tmp_path)
    for n in (3, 6):
        asyncio.run(snap.write(store, make(n), [], KEY))
    newest = tmp_path / snap.snapshot_key(APP, STAGE, PART, 6)
    newest.write_bytes(reseal(newest.read_bytes(), lambda b: b.update(committed_seq=10**6)))

    with caplog.at_level(logging.WARNING, logger="wallaroo_runtime.snapshot"):
        found = asyncio.run(snap.latest_valid(store, APP, STAGE, PART, KEY))

    assert found == make(3)
    assert "000000000006.snap fails its MAC check" in caplog.text
    # Without the key only the checksum is checked, and the forgery would be restored.
    assert asyncio.run(snap.latest_valid(store, APP, STAGE, PART)).committed_seq == 10**6  # type: ignore[union-attr]


def test_segments_after_refuses_a_forged_segment(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(snap.write(store, make(3), [rec(1), rec(2), rec(3)], KEY))
    seg = tmp_path / snap.segment_key(APP, STAGE, PART, 1, 3)
    seg.write_bytes(reseal(seg.read_bytes(), lambda b: b.__setitem__(1, rec(2)[:-1] + b"\x00")))

    with pytest.raises(CorruptSnapshotError, match="000000000001-000000000003.seg fails its MAC"):
        asyncio.run(snap.segments_after(store, APP, STAGE, PART, 0, KEY))


def test_state_round_trip() -> None:
    state = PartitionState.replay(CommitRecord.from_wire(rec(n)) for n in (1, 2))
    s = Snapshot.of(APP, STAGE, PART, state, log_seq=5, created=1.0)
    state.table["later"] = b"not in the snapshot"
    back = s.to_state()

    assert (back.table, back.watermarks) == ({"k1": b"v1", "k2": b"v2"}, {"s0.3": 2})
    assert (back.commit_no, back.committed_seq, s.log_seq) == (2, 20, 5)


# --- keys ---------------------------------------------------------------------------------


def test_keys_sort_in_commit_order() -> None:
    keys = [snap.snapshot_key(APP, STAGE, PART, n) for n in (9, 10, 100, 1)]

    assert keys[0] == "snapshots/word_count/1/3/000000000009.snap"
    assert sorted(keys) == [snap.snapshot_key(APP, STAGE, PART, n) for n in (1, 9, 10, 100)]
    assert snap.segment_key(APP, STAGE, PART, 11, 20) == \
        "segments/word_count/1/3/000000000011-000000000020.seg"


@pytest.mark.parametrize(("slug", "commit_no"), [("a/b", 1), ("", 1), ("..", 1), (APP, -1), (APP, 10**12)])
def test_keys_refuse_what_would_break_the_layout(slug: str, commit_no: int) -> None:
    with pytest.raises(ValueError):
        snap.snapshot_key(slug, STAGE, PART, commit_no)


# --- store operations ---------------------------------------------------------------------


def test_write_puts_the_segment_and_the_snapshot(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3))

    assert asyncio.run(store.list("")) == [
        snap.segment_key(APP, STAGE, PART, 1, 3), snap.snapshot_key(APP, STAGE, PART, 3)]
    assert asyncio.run(snap.latest_valid(store, APP, STAGE, PART)) == make(3)


def test_write_refuses_a_segment_that_does_not_end_at_the_snapshot(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    with pytest.raises(ValueError, match="segment ends at commit 2, but the snapshot is of commit 3"):
        asyncio.run(snap.write(store, make(3), [rec(1), rec(2)]))
    with pytest.raises(ValueError, match="consecutive"):
        asyncio.run(snap.write(store, make(3), [rec(1), rec(3)]))
    assert asyncio.run(store.list("")) == []


def test_write_takes_the_callers_commit_numbers_and_checks_them(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    records = [rec(4), rec(5), rec(6)]

    with pytest.raises(ValueError, match="2 commit numbers for a segment of 3 records"):
        asyncio.run(snap.write(store, make(6), records, commit_nos=[5, 6]))
    with pytest.raises(ValueError, match="consecutive"):
        asyncio.run(snap.write(store, make(6), records, commit_nos=[4, 6, 6]))
    assert asyncio.run(store.list("")) == []

    asyncio.run(snap.write(store, make(6), records, commit_nos=[4, 5, 6]))
    assert asyncio.run(store.list("")) == [
        snap.segment_key(APP, STAGE, PART, 4, 6), snap.snapshot_key(APP, STAGE, PART, 6)]
    segment = asyncio.run(store.get(snap.segment_key(APP, STAGE, PART, 4, 6)))
    assert segment is not None and snap.decode_segment(segment) == records


def test_latest_valid_skips_a_corrupt_newest_snapshot(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3, 6))
    newest = tmp_path / snap.snapshot_key(APP, STAGE, PART, 6)
    newest.write_bytes(newest.read_bytes()[:-5])  # a partial write

    with caplog.at_level(logging.WARNING, logger="wallaroo_runtime.snapshot"):
        found = asyncio.run(snap.latest_valid(store, APP, STAGE, PART))

    assert found == make(3)
    assert "000000000006.snap is truncated" in caplog.text


def test_latest_valid_skips_a_snapshot_of_another_partition(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3))
    other = Snapshot(APP, STAGE, PART + 1, 9, 0, 0)
    asyncio.run(store.put(snap.snapshot_key(APP, STAGE, PART, 9), snap.encode(other)))

    assert asyncio.run(snap.latest_valid(store, APP, STAGE, PART)) == make(3)


def test_latest_valid_is_none_without_snapshots(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3))

    assert asyncio.run(snap.latest_valid(store, APP, STAGE, PART + 1)) is None


def test_segments_after_returns_later_commits_in_order(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3, 6, 10))

    def after(n: int) -> list[int]:
        return numbers(asyncio.run(snap.segments_after(store, APP, STAGE, PART, n)))

    assert after(0) == list(range(1, 11))
    assert after(3) == list(range(4, 11))
    assert after(4) == list(range(5, 11))
    assert after(10) == []
    assert asyncio.run(snap.segments_after(store, APP, STAGE, PART, 3))[0][1] == rec(4)


def test_segments_after_tolerates_overlap(tmp_path: Path) -> None:
    """A crash between segment and snapshot leaves a segment the next owner writes again,
    longer: both are stored, each commit comes back once."""
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3))
    asyncio.run(store.put(snap.segment_key(APP, STAGE, PART, 4, 5), snap.encode_segment([rec(4), rec(5)])))
    asyncio.run(snap.write(store, make(8), [rec(i) for i in range(4, 9)]))

    assert numbers(asyncio.run(snap.segments_after(store, APP, STAGE, PART, 3))) == [4, 5, 6, 7, 8]


def test_segments_after_names_missing_commits(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3, 6, 10))
    asyncio.run(store.delete(snap.segment_key(APP, STAGE, PART, 4, 6)))

    with pytest.raises(CorruptSnapshotError, match="jumps from commit 3 to 7: commits 4..6"):
        asyncio.run(snap.segments_after(store, APP, STAGE, PART, 0))


def test_segments_after_raises_on_a_corrupt_segment(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3, 6))
    seg = tmp_path / snap.segment_key(APP, STAGE, PART, 4, 6)
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x10
    seg.write_bytes(bytes(data))

    with pytest.raises(CorruptSnapshotError, match="000000000004-000000000006.seg fails its sha256"):
        asyncio.run(snap.segments_after(store, APP, STAGE, PART, 3))
    assert numbers(asyncio.run(snap.segments_after(store, APP, STAGE, PART, 6))) == []


def test_prune_keeps_the_newest_snapshots_and_the_segments_they_need(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3, 6, 10, 12))

    deleted = asyncio.run(snap.prune(store, APP, STAGE, PART, keep=2))

    assert sorted(deleted) == sorted([
        snap.snapshot_key(APP, STAGE, PART, 3), snap.snapshot_key(APP, STAGE, PART, 6),
        snap.segment_key(APP, STAGE, PART, 1, 3), snap.segment_key(APP, STAGE, PART, 4, 6),
        snap.segment_key(APP, STAGE, PART, 7, 10)])
    assert asyncio.run(store.list("")) == [
        snap.segment_key(APP, STAGE, PART, 11, 12),
        snap.snapshot_key(APP, STAGE, PART, 10), snap.snapshot_key(APP, STAGE, PART, 12)]
    # Recovery from the older kept snapshot still finds every later commit.
    assert numbers(asyncio.run(snap.segments_after(store, APP, STAGE, PART, 10))) == [11, 12]


def test_prune_sweeps_the_temp_files_of_writes_cut_short_once_stale(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3, 6))
    folder = tmp_path / snap.snapshot_key(APP, STAGE, PART, 6).rpartition("/")[0]
    stale, fresh = folder / ".tmp-000000000009.snap.1", folder / ".tmp-000000000009.snap.2"
    for f in (stale, fresh):
        f.write_bytes(b"cut short by a SIGKILL")
    old = time.time() - snap.STALE_WRITE - 1
    os.utime(stale, (old, old))

    deleted = asyncio.run(snap.prune(store, APP, STAGE, PART, keep=2))

    assert f"{folder.relative_to(tmp_path).as_posix()}/{stale.name}" in deleted
    assert not stale.exists() and fresh.exists()  # a live writer's file is left to its rename


def test_forget_leaves_nothing_of_a_partition_not_even_a_fresh_temp_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3, 6))
    asyncio.run(write_history(FileStore(tmp_path / "other"), 3))
    folder = tmp_path / snap.snapshot_key(APP, STAGE, PART, 6).rpartition("/")[0]
    (folder / ".tmp-000000000009.delta.1").write_bytes(b"cut short by a SIGKILL")

    deleted = asyncio.run(snap.forget(store, APP, STAGE, PART))

    assert len(deleted) == 5  # two snapshots, two segments, the temp file
    assert [p for p in tmp_path.rglob("*") if p.is_file() and "other" not in p.parts] == []
    assert asyncio.run(snap.forget(store, APP, STAGE, PART)) == []


def test_prune_with_few_snapshots_deletes_nothing_they_need(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(write_history(store, 3))

    deleted = asyncio.run(snap.prune(store, APP, STAGE, PART, keep=2))

    assert deleted == [snap.segment_key(APP, STAGE, PART, 1, 3)]
    assert asyncio.run(snap.prune(store, APP, STAGE, PART + 1)) == []
    assert asyncio.run(snap.latest_valid(store, APP, STAGE, PART)) == make(3)
    with pytest.raises(ValueError, match="keep must be at least 1"):
        asyncio.run(snap.prune(store, APP, STAGE, PART, keep=0))
