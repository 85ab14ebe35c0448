"""wallaroo.core.statetable: a lazily restored state table behaves as the dict it stands for,
decodes a chunk only when one of its keys is used, and lets entries written since win."""

from __future__ import annotations

import pickle
from collections import ChainMap

import msgpack
import pytest

from wallaroo.core.statetable import LazyTable, bucket_of, bucketed, slots

TABLE = {f"count\x1fk{i}": str(i).encode() for i in range(1000)} | {"w\x1f\udcff": b"surrogate"}


def lazy(table: dict[str, bytes] = TABLE, buckets: int = 16) -> tuple[LazyTable, list[int]]:
    """A LazyTable of `table` and a list that records each chunk decode."""
    decoded: list[int] = []

    def decode(chunk: bytes) -> dict[str, bytes]:
        decoded.append(len(chunk))
        return dict(msgpack.unpackb(chunk, unicode_errors="surrogatepass"))

    chunks = [msgpack.packb(c, use_bin_type=True, unicode_errors="surrogatepass")
              for c in bucketed(table, buckets)]
    return LazyTable(chunks, decode), decoded


def test_buckets_are_stable_and_cover_every_key() -> None:
    chunks = bucketed(TABLE, 16)

    assert sum(map(len, chunks)) == len(TABLE)
    assert all(bucket_of(k, 16) == b for b, chunk in enumerate(chunks) for k in chunk)
    assert bucket_of("count\x1fk1", 16) == 3  # crc32: the same in every process and version


def test_a_lookup_decodes_one_chunk_only() -> None:
    table, decoded = lazy()

    assert table.get("count\x1fk7") == b"7"
    assert table["count\x1fk8"] == b"8" and "count\x1fk9" in table
    assert table.get("absent") is None and "absent" not in table
    with pytest.raises(KeyError):
        table["absent"]
    assert len(decoded) <= 4 and not table.loaded
    assert table.get("w\x1f\udcff") == b"surrogate"


def test_entries_written_since_win_over_their_chunk() -> None:
    table, _ = lazy()
    table.update({"count\x1fk5": b"new", "fresh": b"1"})  # a commit, before k5's chunk is read

    assert table.get("count\x1fk5") == b"new"
    assert table == TABLE | {"count\x1fk5": b"new", "fresh": b"1"}


def test_what_needs_every_entry_sees_every_entry() -> None:
    for use in (dict, len, sorted, lambda t: t.copy(), lambda t: dict(t.items()),
                lambda t: sorted(t.values()), lambda t: {**t}, lambda t: t | {},
                lambda t: pickle.loads(pickle.dumps(t))):
        table, _ = lazy()
        plain = dict(TABLE)
        assert use(table) == use(plain), use
    table, _ = lazy()
    assert TABLE == table and table == TABLE and table != {}


def test_a_chainmap_view_reads_through() -> None:
    table, _ = lazy()
    view = ChainMap({"count\x1fk1": b"mine"}, table)

    assert view["count\x1fk1"] == b"mine" and view.get("count\x1fk2") == b"2"
    assert view.get("absent") is None


def test_slots_counts_without_decoding() -> None:
    table, decoded = lazy()

    assert slots(table) == f"~{len(TABLE):,}" and decoded == []
    assert slots(dict(TABLE)) == f"{len(TABLE):,}"


def pack(entries: dict[str, bytes]) -> bytes:
    return bytes(msgpack.packb(entries, use_bin_type=True, unicode_errors="surrogatepass"))


def test_repack_folds_what_was_written_into_only_the_buckets_it_changed() -> None:
    table, decoded = lazy()
    before = list(table._cold)
    table["count\x1fk1"] = b"new"  # bucket 3
    table["fresh"] = b"1"
    assert table.get("count\x1fk2") == b"2"  # a bucket decoded by a lookup, nothing written
    changed = {bucket_of(k, 16) for k in ("count\x1fk1", "fresh", "count\x1fk2")}
    decoded.clear()

    chunks = table.repack(pack)

    assert len(decoded) == len(changed - {bucket_of("count\x1fk2", 16)})  # decoded ones: as they are
    assert [b for b in range(16) if chunks[b] is not before[b]] == sorted(changed)
    assert table.size_hint() == len(TABLE) + 1 and not dict.__len__(table)  # all in its chunks
    assert dict(table) == TABLE | {"count\x1fk1": b"new", "fresh": b"1"}
    back = LazyTable(chunks, lambda c: dict(msgpack.unpackb(c, unicode_errors="surrogatepass")))
    assert back == table


def test_repack_into_a_multiple_of_the_buckets_splits_each_one_bucket_at_a_time() -> None:
    table, decoded = lazy()
    table["fresh"] = b"1"

    chunks = table.repack(pack, 64)

    assert len(decoded) == 16  # each old bucket decoded once, and split
    assert len(chunks) == table.buckets == 64
    regrouped = LazyTable(chunks, lambda c: dict(msgpack.unpackb(c, unicode_errors="surrogatepass")))
    assert all(bucket_of(k, 64) == b for b, c in enumerate(chunks)
               for k in msgpack.unpackb(c, unicode_errors="surrogatepass"))
    assert regrouped == TABLE | {"fresh": b"1"}
    with pytest.raises(ValueError, match="multiple"):
        table.repack(pack, 100)
