"""Partition snapshots and changelog segments, and where they live in a state store
(DESIGN.md section 6).

Snapshots are incremental: a full snapshot (`.snap`) holds a partition's whole state after one
commit; a delta (`.delta`) only the keys changed since the snapshot before it (its `base`), so
writing one costs what changed, not the state's size. The checkpointer writes a new full
snapshot (compaction) once the deltas since the last one add up to a quarter of its size,
which keeps the amortised cost proportional to the change rate and what a restore reads at
most 1.25 times the state.
A segment holds encoded commit records in commit order: those since the previous segment, up
to and including the commit of the snapshot it goes with, or stored on its own between
snapshots (the changelog is trimmed after each). Recovery is the newest valid full snapshot
rolled forward through the deltas after it, then `segments_after` that (they bridge a corrupt
or missing delta, and carry the commits since the snapshot), then the JetStream changelog
after that.

Tables are stored in chunks of a few thousand keys, each packed on its own: packing one
chunk is one short call, so a big table is encoded in a thread without holding the
interpreter for the whole table (the event loop keeps serving the other partitions). A full
snapshot's chunks are buckets of keys (wallaroo.core.statetable.bucket_of), so a restore hands
them over still encoded (a LazyTable) and a chunk is decoded when one of its keys is first
used: recovery of a big state does not wait for every key to be decoded.

Both are sealed in one envelope: a msgpack map of kind, format version, the msgpack body, and
the body's sha256, so a flipped bit, a cut-off file or a newer format is caught on reading
instead of restoring wrong state. With a state key (runners hold it, `--state-key`) the
envelope also carries an HMAC-SHA256 of kind, version and body: the checksum catches accidents,
the MAC catches a change made by someone who can write the store but is no runner (anyone can
recompute a checksum). A runner with a key refuses what carries no MAC or a wrong one, as it
refuses a corrupt file: the snapshot before it is used. Keys zero-pad commit numbers: a store's
sorted listing is commit order.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from wallaroo.core.changelog import PartitionState
from wallaroo.core.codec import STR_ERRORS
from wallaroo.core.errors import WallarooError
from wallaroo.core.statetable import LazyTable, bucketed
from wallaroo.core.wire import CommitRecord
from wallaroo_runtime.statestore import StateStore

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: one table map, full snapshots only
CHUNK_KEYS = 4096  # per chunk of a delta (decoded whole at a restore)
# Per bucket of a full snapshot: the first batches after a restore decode a bucket per key
# they touch, so small buckets keep a hot set spread over the keys from decoding them all.
BUCKET_KEYS = 512
# A restored table keeps its bucket count when a full snapshot is made of it (its unchanged
# buckets then keep their bytes) until its buckets hold this many times BUCKET_KEYS on average;
# then the count doubles (each bucket splits in two) until they hold fewer.
REBUCKET_AT = 2
SNAPSHOT_KIND = "wallaroo-snapshot"
SEGMENT_KIND = "wallaroo-segment"
# A restore from the store alone (the changelog lost) jumps the commit number by this, so new
# outputs are never taken downstream for the lost ones; segments may jump by it once.
COMMIT_EPOCH = 1_000_000
# A temp file untouched this long is from a writer that died before its rename (a live one's
# file grows until it is renamed): prune sweeps them.
STALE_WRITE = 600.0
_MAX_COMMIT = 10**12 - 1  # what fits the 12-digit padding that keeps listings in commit order
_SNAP_NAME = re.compile(r"(\d{12})\.(snap|delta)")
_SEG_NAME = re.compile(r"(\d{12})-(\d{12})\.seg")


class CorruptSnapshotError(WallarooError, ValueError):
    """A snapshot or segment does not decode: changed bytes, cut short, or another format."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where} {problem}")


@dataclass(frozen=True)
class Snapshot:
    """One partition's state after commit `commit_no`, which is at `log_seq` in the changelog.
    A delta (`base` set) holds in `table` only the keys changed after commit `base`."""

    slug: str
    stage: int
    partition: int
    commit_no: int
    log_seq: int
    committed_seq: int
    watermarks: dict[str, int] = field(default_factory=dict)
    table: dict[str, bytes] = field(default_factory=dict)
    created: float = 0.0
    base: int | None = None

    @classmethod
    def of(cls, slug: str, stage: int, part: int, state: PartitionState, log_seq: int,
           created: float) -> Snapshot:
        """A full snapshot of `state` (copied, so later commits do not change it)."""
        return cls(slug, stage, part, state.commit_no, log_seq, state.committed_seq,
                   dict(state.watermarks), state.table.copy(), created)

    @classmethod
    def delta(cls, slug: str, stage: int, part: int, state: PartitionState, log_seq: int,
              created: float, base: int, changed: dict[str, bytes]) -> Snapshot:
        """A delta of `state` over the snapshot of commit `base`: `changed` holds the newest
        value of every key changed since (handed over: the caller must not change it after)."""
        return cls(slug, stage, part, state.commit_no, log_seq, state.committed_seq,
                   dict(state.watermarks), changed, created, base)

    @property
    def is_delta(self) -> bool:
        return self.base is not None

    def to_state(self) -> PartitionState:
        """The partition state to continue from; `last` is None (no commit record in hand).
        The table is handed over, not copied (a restored snapshot is read once)."""
        return PartitionState(table=self.table, watermarks=dict(self.watermarks),
                              committed_seq=self.committed_seq, commit_no=self.commit_no)


# --- encoding -----------------------------------------------------------------------------


def encode(snapshot: Snapshot, state_key: bytes | None = None) -> bytes:
    """The snapshot's bytes, sealed with format version, checksum and (with a state key) MAC."""
    s = snapshot
    return _seal(SNAPSHOT_KIND, {
        "slug": s.slug, "stage": s.stage, "partition": s.partition, "commit_no": s.commit_no,
        "log_seq": s.log_seq, "committed_seq": s.committed_seq, "watermarks": s.watermarks,
        "table": _packed_table(s), "created": s.created, "base": s.base,
        "bucketed": not s.is_delta,
    }, state_key)


def _packed_table(s: Snapshot) -> list[bytes]:
    if s.is_delta:  # read whole at every restore: plain chunks
        items = iter(s.table.items())
        return [_pack(dict(itertools.islice(items, CHUNK_KEYS)))
                for _ in range(0, len(s.table), CHUNK_KEYS)]
    table = s.table
    if isinstance(table, LazyTable) and table.buckets:  # restored: bucket by bucket (repack)
        buckets = table.buckets
        while table.size_hint() > buckets * BUCKET_KEYS * REBUCKET_AT:
            buckets *= 2
        return table.repack(_pack, buckets)
    return [_pack(chunk) for chunk in bucketed(table, max(1, -(-len(table) // BUCKET_KEYS)))]


def decode(data: bytes, where: str = "snapshot", state_key: bytes | None = None) -> Snapshot:
    """The snapshot `encode` made; CorruptSnapshotError (naming `where`) if it is not one, or,
    with a state key, if its MAC is missing or wrong."""
    body = _unseal(SNAPSHOT_KIND, data, where, state_key)
    try:
        fields = {name: body[name] for name in _SNAPSHOT_FIELDS}
        fields["table"] = _table(fields["table"], where, bool(body.get("bucketed")))
        return Snapshot(**fields, base=body.get("base"))
    except (KeyError, TypeError) as e:
        raise CorruptSnapshotError(where, f"has no field {e}: not written by this format") from e


def _table(stored: Any, where: str, lazy: bool) -> dict[str, bytes]:
    if isinstance(stored, dict):  # format version 1: one map
        return stored
    if not isinstance(stored, list) or not all(isinstance(c, bytes) for c in stored):
        raise CorruptSnapshotError(where, "holds no table chunks")
    if lazy:  # the checksum (and MAC) covered every chunk: they decode when used
        return LazyTable(stored, functools.partial(_chunk, where=where))
    table: dict[str, bytes] = {}
    for chunk in stored:
        table.update(_chunk(chunk, where))
    return table


def _chunk(chunk: bytes, where: str) -> dict[str, bytes]:
    part = _unpack(chunk, where)
    if not isinstance(part, dict):
        raise CorruptSnapshotError(where, "holds a table chunk that is not a map")
    return part


_SNAPSHOT_FIELDS = ("slug", "stage", "partition", "commit_no", "log_seq", "committed_seq",
                    "watermarks", "table", "created")


def encode_segment(records: list[bytes], state_key: bytes | None = None) -> bytes:
    """Encoded commit records, in commit order, sealed like a snapshot."""
    return _seal(SEGMENT_KIND, list(records), state_key)


def decode_segment(data: bytes, where: str = "segment", state_key: bytes | None = None) -> list[bytes]:
    """The encoded commit records `encode_segment` sealed."""
    body = _unseal(SEGMENT_KIND, data, where, state_key)
    if not isinstance(body, list) or not all(isinstance(r, bytes) for r in body):
        raise CorruptSnapshotError(where, "does not hold a list of commit records")
    return body


def _pack(body: Any) -> bytes:
    return bytes(msgpack.packb(body, use_bin_type=True, unicode_errors=STR_ERRORS))


def _seal(kind: str, body: Any, state_key: bytes | None) -> bytes:
    packed = _pack(body)
    envelope: dict[str, Any] = {"kind": kind, "v": FORMAT_VERSION,
                                "sha256": hashlib.sha256(packed).digest(), "body": packed}
    if state_key is not None:
        envelope["mac"] = _mac(state_key, kind, FORMAT_VERSION, packed)
    return bytes(msgpack.packb(envelope, use_bin_type=True))


def _mac(key: bytes, kind: str, version: int, body: bytes) -> bytes:
    # Kind and version inside the MAC: a segment's sealed body cannot pass for a snapshot's.
    mac = hmac.new(key, f"{kind}\0{version}\0".encode(), hashlib.sha256)
    mac.update(body)  # not prefix + body: that copied the whole body once more
    return mac.digest()


def _check_mac(outer: dict[str, Any], kind: str, where: str, state_key: bytes | None) -> None:
    if state_key is None:
        return  # no key: checksum only (the runner warned about it when it started)
    mac = outer.get("mac")
    if not isinstance(mac, bytes):
        raise CorruptSnapshotError(where, "carries no MAC, and this runner has a state key: it "
                                          "was written without one, or the MAC was stripped")
    if not hmac.compare_digest(mac, _mac(state_key, kind, outer["v"], outer["body"])):
        raise CorruptSnapshotError(where, "fails its MAC check: it was changed after writing, "
                                          "or written with another state key")


def _unseal(kind: str, data: bytes, where: str, state_key: bytes | None) -> Any:
    outer = _unpack(data, where)
    if not isinstance(outer, dict) or outer.get("kind") != kind:
        found = outer.get("kind") if isinstance(outer, dict) else type(outer).__name__
        raise CorruptSnapshotError(where, f"is not a {kind} (found {found!r})")
    if outer.get("v") not in READABLE_VERSIONS:
        raise CorruptSnapshotError(where, f"has format version {outer.get('v')!r}, this runner reads "
                                          f"versions {READABLE_VERSIONS}: upgrade the runner")
    body = outer.get("body")
    if not isinstance(body, bytes) or hashlib.sha256(body).digest() != outer.get("sha256"):
        raise CorruptSnapshotError(where, "fails its sha256 checksum: the bytes changed after writing")
    _check_mac(outer, kind, where, state_key)
    return _unpack(body, where)


def _unpack(data: bytes, where: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, unicode_errors=STR_ERRORS)
    except (ValueError, TypeError) as e:  # msgpack's errors for cut-off or garbled input
        problem = f"is truncated or not msgpack ({str(e) or type(e).__name__})"
        raise CorruptSnapshotError(where, problem) from e


# --- keys ---------------------------------------------------------------------------------


def snapshot_key(slug: str, stage: int, part: int, commit_no: int, delta: bool = False) -> str:
    """`snapshots/<slug>/<stage>/<part>/<commit_no:012d>.snap`, or `.delta` for a delta"""
    return f"{_folder('snapshots', slug, stage, part)}{_commit(commit_no)}.{_SUFFIX[delta]}"


_SUFFIX = {False: "snap", True: "delta"}


@dataclass(frozen=True)
class Listed:
    """A stored snapshot file of a partition, known from its key."""

    commit_no: int
    delta: bool
    key: str


def segment_key(slug: str, stage: int, part: int, first_commit: int, last_commit: int) -> str:
    """`segments/<slug>/<stage>/<part>/<first_commit:012d>-<last_commit:012d>.seg`"""
    if first_commit > last_commit:
        msg = f"segment commits {first_commit}..{last_commit} are in the wrong order"
        raise ValueError(msg)
    name = f"{_commit(first_commit)}-{_commit(last_commit)}"
    return f"{_folder('segments', slug, stage, part)}{name}.seg"


def _folder(kind: str, slug: str, stage: int, part: int) -> str:
    if not slug or "/" in slug or slug.startswith(".") or stage < 0 or part < 0:
        msg = f"no state store folder for app {slug!r} stage {stage} partition {part}"
        raise ValueError(msg)
    return f"{kind}/{slug}/{stage}/{part}/"


def _commit(n: int) -> str:
    if not 0 <= n <= _MAX_COMMIT:
        msg = f"commit number {n} is outside 0..{_MAX_COMMIT}"
        raise ValueError(msg)
    return f"{n:012d}"


async def _snapshots(store: StateStore, slug: str, stage: int, part: int) -> list[Listed]:
    """Every snapshot (full and delta) of a partition, oldest commit first."""
    found = []
    for key in await store.list(_folder("snapshots", slug, stage, part)):
        m = _SNAP_NAME.fullmatch(key.rpartition("/")[2])
        if m:
            found.append(Listed(int(m[1]), m[2] == "delta", key))
    return sorted(found, key=lambda f: (f.commit_no, f.delta))


async def _segments(store: StateStore, slug: str, stage: int, part: int) -> list[tuple[int, int, str]]:
    """(first_commit, last_commit, key) of every segment of a partition, oldest first."""
    found = []
    for key in await store.list(_folder("segments", slug, stage, part)):
        m = _SEG_NAME.fullmatch(key.rpartition("/")[2])
        if m:
            found.append((int(m[1]), int(m[2]), key))
    return sorted(found)


# --- store operations ---------------------------------------------------------------------


async def write(store: StateStore, snapshot: Snapshot, segment_records: list[bytes],
                state_key: bytes | None = None, commit_nos: Sequence[int] | None = None) -> int:
    """Store the changelog segment ending at the snapshot's commit, then the snapshot: a reader
    that finds the snapshot also finds every commit it covers. `segment_records` are encoded
    commit records in order; empty writes the snapshot alone. Both are MACed with `state_key`.
    `commit_nos`: the records' commit numbers, when the caller knows them (a checkpointer
    does), so that they are not decoded again. Encoding runs in a thread. Returns the
    snapshot's size in bytes."""
    s = snapshot
    if segment_records:
        _, last = _commit_range(segment_records, commit_nos)
        if last != s.commit_no:
            msg = f"segment ends at commit {last}, but the snapshot is of commit {s.commit_no}"
            raise ValueError(msg)
        await write_segment(store, s.slug, s.stage, s.partition, segment_records, commit_nos,
                            state_key)
    data = await asyncio.to_thread(encode, s, state_key)
    await store.put(snapshot_key(s.slug, s.stage, s.partition, s.commit_no, s.is_delta), data)
    return len(data)


async def write_segment(store: StateStore, slug: str, stage: int, part: int, records: list[bytes],
                        commit_nos: Sequence[int] | None = None, state_key: bytes | None = None,
                        ) -> None:
    """Store encoded commit records (consecutive, in order; `commit_nos` their numbers when
    the caller knows them) as one segment, MACed with `state_key`. Between snapshots too: a
    restore reads the segments after its snapshot."""
    first, last = _commit_range(records, commit_nos)
    # Why a thread: a segment is up to a few MB of records to pack, hash and MAC, which
    # held the runner's event loop (every partition's commits) for up to 10 ms.
    encoded = await asyncio.to_thread(encode_segment, records, state_key)
    await store.put(segment_key(slug, stage, part, first, last), encoded)


def _commit_range(records: list[bytes], commit_nos: Sequence[int] | None) -> tuple[int, int]:
    # Why the caller's numbers when it has them: decoding a segment's records whole, on the
    # event loop, stalled every partition of the runner for 5-25 ms at each snapshot.
    numbers = list(commit_nos) if commit_nos is not None else \
        [CommitRecord.from_wire(r).commit_no for r in records]
    if len(numbers) != len(records):
        msg = f"{len(numbers)} commit numbers for a segment of {len(records)} records"
        raise ValueError(msg)
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        msg = f"segment commits must be consecutive, got {numbers[:3]}...{numbers[-3:]}"
        raise ValueError(msg)
    return numbers[0], numbers[-1]


@dataclass(frozen=True)
class Chain:
    """What a restore found: the state the stored snapshots rebuild (a full snapshot rolled
    forward through the deltas after it), and the sizes the checkpointer's compaction needs."""

    snapshot: Snapshot
    full_bytes: int
    applied: tuple[tuple[int, int], ...]  # the deltas rolled through: (commit, bytes) each

    @property
    def delta_bytes(self) -> int:
        return sum(size for _, size in self.applied)

    @property
    def deltas(self) -> int:
        return len(self.applied)


async def latest_valid(store: StateStore, slug: str, stage: int, part: int,
                       state_key: bytes | None = None) -> Snapshot | None:
    """The newest state the stored snapshots rebuild (see `latest_chain`); None without one."""
    chain = await latest_chain(store, slug, stage, part, state_key)
    return None if chain is None else chain.snapshot


async def latest_chain(store: StateStore, slug: str, stage: int, part: int,
                       state_key: bytes | None = None) -> Chain | None:
    """The newest full snapshot of the partition that decodes (and, with a state key, carries
    its MAC), rolled forward through the deltas after it as far as they join up; a corrupt
    full snapshot is logged and the one before it tried, a corrupt or missing delta ends the
    roll (the stored segments bridge from there). None when there is no full snapshot."""
    listed = await _snapshots(store, slug, stage, part)
    for full in reversed([f for f in listed if not f.delta]):
        read = await _read(store, full, (slug, stage, part), state_key)
        if read is not None:
            later = [f for f in listed if f.delta and f.commit_no > full.commit_no]
            return await _roll(store, read, later, (slug, stage, part), state_key)
    return None


async def _read(store: StateStore, listed: Listed, where_from: tuple[str, int, int],
                state_key: bytes | None) -> tuple[Snapshot, int] | None:
    """The snapshot and its size; None (logged) when it is gone, corrupt or misplaced."""
    data = await store.get(listed.key)
    if data is None:  # pruned between listing and reading
        return None
    where = f"snapshot {listed.key}"
    try:
        found = await asyncio.to_thread(decode, data, where, state_key)
        _check_identity(found, where, (*where_from, listed.commit_no), listed.delta)
    except CorruptSnapshotError as e:
        log.warning("%s; %s", e, "ending the roll forward there" if listed.delta
                    else "trying the snapshot before it")
        return None
    return found, len(data)


async def _roll(store: StateStore, full: tuple[Snapshot, int], deltas: list[Listed],
                where_from: tuple[str, int, int], state_key: bytes | None) -> Chain:
    current, full_bytes = full
    applied: list[tuple[int, int]] = []
    for listed in deltas:
        read = await _read(store, listed, where_from, state_key)
        if read is None:
            break
        delta, size = read
        assert delta.base is not None
        if delta.base > current.commit_no:
            log.warning("snapshot %s is a delta over commit %d, the roll forward reached only %d",
                        listed.key, delta.base, current.commit_no)
            break
        # A delta over an earlier commit still holds the newest value of every key changed
        # since: applied on a later state it gives the state of its own commit.
        current.table.update(delta.table)  # in place: the full snapshot was read for this only
        current = replace(delta, table=current.table, base=None)
        applied.append((delta.commit_no, size))
    return Chain(current, full_bytes, tuple(applied))


def _check_identity(snap: Snapshot, where: str, expected: tuple[str, int, int, int],
                    delta: bool) -> None:
    """A snapshot copied under another partition's key must not restore that partition (nor
    a delta pass for a full snapshot, or the other way round)."""
    found = (snap.slug, snap.stage, snap.partition, snap.commit_no)
    if found != expected:
        raise CorruptSnapshotError(where, f"holds app/stage/partition/commit {found}, not {expected}")
    if snap.is_delta != delta:
        raise CorruptSnapshotError(where, f"is {'not ' * delta}a delta, as its name says")


async def segments_after(store: StateStore, slug: str, stage: int, part: int,
                         commit_no: int, state_key: bytes | None = None
                         ) -> list[tuple[CommitRecord, bytes]]:
    """The commit records numbered above `commit_no`, consecutive and in order, from the
    stored segments: each decoded (once: a restore applies what this checked) with its
    encoded bytes. CorruptSnapshotError if a segment is corrupt (or fails its MAC) or
    commits are missing."""
    out: list[tuple[CommitRecord, bytes]] = []
    current = commit_no
    for _first, last, key in await _segments(store, slug, stage, part):
        if last <= current:
            continue
        where, data = f"segment {key}", await store.get(key)
        if data is None:
            raise CorruptSnapshotError(where, "was listed but is gone")
        current = _append_after(out, decode_segment(data, where, state_key), current, where)
    return out


def _append_after(out: list[tuple[CommitRecord, bytes]], records: list[bytes], current: int,
                  where: str) -> int:
    """Append the records numbered above `current` (overlapping segments are fine, gaps are
    not); return the last commit number appended."""
    for raw in records:
        try:
            rec = CommitRecord.from_wire(raw)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise CorruptSnapshotError(where, f"holds a bad commit record ({e})") from e
        n = rec.commit_no
        if n <= current:
            continue
        if n not in (current + 1, current + COMMIT_EPOCH + 1):
            raise CorruptSnapshotError(where, f"jumps from commit {current} to {n}: commits "
                                              f"{current + 1}..{n - 1} are in no stored segment")
        out.append((rec, raw))
        current = n
    return current


async def prune(store: StateStore, slug: str, stage: int, part: int, keep: int = 2) -> list[str]:
    """Delete all but the newest `keep` full snapshots, with the deltas up to the oldest one
    kept and the segments that end at or before it (recovery from it never reads them), and
    the temp files of writes cut short (StateStore.sweep) older than STALE_WRITE. Returns
    what it deleted."""
    if keep < 1:
        msg = f"keep must be at least 1 (the newest snapshot), got {keep}"
        raise ValueError(msg)
    listed = await _snapshots(store, slug, stage, part)
    fulls = [f for f in listed if not f.delta]
    if not fulls:
        return []
    oldest_kept = fulls[-keep:][0].commit_no
    doomed = [f.key for f in listed if f.commit_no < oldest_kept
              or (f.delta and f.commit_no == oldest_kept)]
    doomed += [key for _, last, key in await _segments(store, slug, stage, part) if last <= oldest_kept]
    for key in doomed:
        await store.delete(key)
    return doomed + await _sweep(store, slug, stage, part, STALE_WRITE)


async def forget(store: StateStore, slug: str, stage: int, part: int) -> list[str]:
    """Delete every snapshot, delta and segment of a partition (one of a retired layout, which
    nobody restores again); the deleted keys. Repeatable: a second call finds nothing."""
    doomed = [*await store.list(_folder("snapshots", slug, stage, part)),
              *await store.list(_folder("segments", slug, stage, part))]
    for key in doomed:
        await store.delete(key)
    # No age here: nobody may write a retired partition, and a writer cut short leaves a
    # temp file that would outlive it.
    return doomed + await _sweep(store, slug, stage, part, 0.0)


async def _sweep(store: StateStore, slug: str, stage: int, part: int, older_than: float) -> list[str]:
    swept = [key for kind in ("snapshots", "segments")
             for key in await store.sweep(_folder(kind, slug, stage, part), older_than)]
    if swept:
        log.info("%s/%d/%d: removed %d temp file(s) of writes cut short: %s", slug, stage, part,
                 len(swept), ", ".join(swept))
    return swept
