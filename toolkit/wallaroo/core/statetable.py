"""A partition's state table restored lazily: what makes recovery of a big state fast.

A full snapshot stores its table in chunks, each holding the keys of one bucket
(`bucket_of`: a stable hash of the key, so a key's chunk can be found in any process). A
restore hands the chunks, still encoded, to a `LazyTable`; a chunk is decoded the first time
one of its keys is looked up. So restoring a million keys costs reading and checking their
bytes, not building two million objects before the partition can commit again: the work is
spread over the first batches, and only for the keys they touch.

`LazyTable` is a dict (the engine, the worker and the checkpointer take the table as one), whose
own entries are the decoded chunks' and those written since the restore; a written entry wins
over its chunk's older value. Lookups (`get`, `[]`, `in`) decode one chunk at most; anything
that needs every entry (iteration, `len`, `copy`, comparison) decodes all chunks first.
"""

from __future__ import annotations

import zlib
from _collections_abc import dict_items, dict_keys, dict_values
from collections.abc import Callable, Iterator
from typing import Any

_ABSENT: Any = object()


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of a state slot among `buckets`; the same in every process (crc32, never
    the salted built-in hash). Lone surrogates (keys of undecodable bytes) pass through."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % buckets


def bucketed(table: dict[str, bytes], buckets: int) -> list[dict[str, bytes]]:
    """The table split into `buckets` dicts by `bucket_of`."""
    chunks: list[dict[str, bytes]] = [{} for _ in range(buckets)]
    crc = zlib.crc32
    for key, value in table.items():  # inlined bucket_of: this loop runs once per key
        chunks[crc(key.encode("utf-8", "surrogatepass")) % buckets][key] = value
    return chunks


def _split(entries: dict[str, bytes], target: int, count: int) -> list[dict[str, bytes]]:
    """One bucket's entries among `count` buckets, split among the target // count buckets
    of `target` they fall into (in the order of their bucket numbers)."""
    if target == count:
        return [entries]
    parts: list[dict[str, bytes]] = [{} for _ in range(target // count)]
    for key, value in entries.items():
        parts[bucket_of(key, target) // count][key] = value
    return parts


class LazyTable(dict[str, bytes]):
    """A state table whose chunks (one per bucket, encoded) are decoded on first use."""

    def __init__(self, chunks: list[bytes], decode: Callable[[bytes], dict[str, bytes]]) -> None:
        super().__init__()
        self._cold: list[bytes | None] = list(chunks)
        self._left = len(chunks)
        self._decode = decode

    @property
    def loaded(self) -> bool:
        """Is every chunk decoded (the table is then a plain dict in all but type)?"""
        return self._left == 0

    def _load(self, key: str) -> bool:
        """Decode the chunk that may hold `key`: False when it was decoded before."""
        if not self._left:
            return False
        bucket = bucket_of(key, len(self._cold))
        chunk = self._cold[bucket]
        if chunk is None:
            return False
        self._take(bucket, chunk)
        return True

    def _take(self, bucket: int, chunk: bytes) -> None:
        self._cold[bucket] = None
        self._left -= 1
        decoded = self._decode(chunk)
        # Entries written since the restore are newer than their chunk's: they win.
        decoded.update({k: dict.__getitem__(self, k) for k in decoded.keys() & dict.keys(self)})
        dict.update(self, decoded)

    def load_all(self) -> None:
        for bucket, chunk in enumerate(self._cold):
            if chunk is not None:
                self._take(bucket, chunk)

    @property
    def buckets(self) -> int:
        return len(self._cold)

    def repack(self, pack: Callable[[dict[str, bytes]], bytes], buckets: int | None = None
               ) -> list[bytes]:
        """The table as encoded chunks of `buckets` buckets (its own count, or a multiple of
        it), the entries written since the restore folded in. With its own count a bucket
        nothing was written to keeps its bytes (neither decoded nor packed again); with a
        multiple, each bucket splits into that many (crc32 % (k * n) keeps a key among the
        k buckets its old one splits into). Either way one bucket is decoded at a time, and
        the table then holds exactly the chunks returned and no decoded entry. So compacting
        a restored table (wallaroo_runtime.compactor) costs what changed, and its memory
        follows the encoded size, not every entry decoded at once."""
        count = len(self._cold)
        target = buckets or count
        if target % count:
            msg = f"{target} buckets are not a multiple of the table's {count}"
            raise ValueError(msg)
        written: list[dict[str, bytes]] = [{} for _ in range(count)]
        for key, value in dict.items(self):
            written[bucket_of(key, count)][key] = value
        chunks: list[bytes] = [b""] * target
        for old, (chunk, entries) in enumerate(zip(self._cold, written, strict=True)):
            if chunk is not None and not entries and target == count:
                chunks[old] = chunk
                continue
            # A decoded bucket's entries are all in the table already (its chunk is gone).
            merged = entries if chunk is None else self._decode(chunk) | entries
            for split, part in enumerate(_split(merged, target, count)):
                chunks[old + split * count] = pack(part)
        dict.clear(self)
        self._cold, self._left = list(chunks), target
        return chunks

    def get(self, key: str, default: Any = None) -> Any:
        value = dict.get(self, key, _ABSENT)
        if value is _ABSENT:
            return dict.get(self, key, default) if self._load(key) else default
        return value

    def __missing__(self, key: str) -> bytes:
        if self._load(key) and dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        return isinstance(key, str) and self._load(key) and dict.__contains__(self, key)

    def size_hint(self) -> int:
        """Entries decoded or written, plus those still encoded (a key written since the
        restore may be counted twice): for logs, without decoding anything."""
        return dict.__len__(self) + sum(self._chunk_len(c) for c in self._cold if c is not None)

    @staticmethod
    def _chunk_len(chunk: bytes) -> int:
        # A msgpack map header: fixmap (0x80-0x8f), map16 (0xde) or map32 (0xdf).
        first = chunk[0]
        if 0x80 <= first <= 0x8F:
            return first & 0x0F
        width = {0xDE: 2, 0xDF: 4}.get(first, 0)
        return int.from_bytes(chunk[1:1 + width], "big") if width else 0

    # Everything below needs every entry: decode all chunks first.

    def __iter__(self) -> Iterator[str]:
        self.load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.load_all()
        return dict.__len__(self)

    def __eq__(self, other: object) -> bool:
        self.load_all()
        if isinstance(other, LazyTable):
            other.load_all()
        return dict.__eq__(self, other)

    __hash__ = None

    def __repr__(self) -> str:
        self.load_all()
        return f"LazyTable({dict.__repr__(self)})"

    def keys(self) -> dict_keys[str, bytes]:
        self.load_all()
        return dict.keys(self)

    def values(self) -> dict_values[str, bytes]:
        self.load_all()
        return dict.values(self)

    def items(self) -> dict_items[str, bytes]:
        self.load_all()
        return dict.items(self)

    def copy(self) -> dict[str, bytes]:
        """A plain dict of every entry."""
        self.load_all()
        return dict(dict.items(self))

    def pop(self, key: str, *default: Any) -> Any:
        self._load(key)
        return dict.pop(self, key, *default)

    def setdefault(self, key: str, default: bytes) -> bytes:
        self._load(key)
        return dict.setdefault(self, key, default)

    def __delitem__(self, key: str) -> None:
        self._load(key)
        dict.__delitem__(self, key)

    def popitem(self) -> tuple[str, bytes]:
        self.load_all()
        return dict.popitem(self)

    def __or__(self, other: Any) -> dict[str, bytes]:  # type: ignore[override]
        return self.copy() | dict(other)

    def __ror__(self, other: Any) -> dict[str, bytes]:  # type: ignore[override]
        self.load_all()
        return dict(other) | dict(dict.items(self))

    def __reduce__(self) -> Any:
        return (dict, (self.copy(),))


def slots(table: dict[str, bytes]) -> str:
    """How many state slots a table holds, for a log line, without decoding a lazy one."""
    return f"~{table.size_hint():,}" if isinstance(table, LazyTable) else f"{len(table):,}"
