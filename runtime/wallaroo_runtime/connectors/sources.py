"""Connector sources: lines of a local file (followed as it grows) or of S3 objects (in key
order), published into the app's data stream exactly as `wallaroo send` does (msgpack
batches of raw records, decoded later by the app's decoder).

Exactly once into the stream: a batch's message id is `i:<source id>:<byte offset of its
first record>`; every window of batches is recorded in NATS KV before it is published and
its end after JetStream acknowledged it (see progress.py), so a restart re-sends only the
window in flight, batch for batch, and the stream's dedup window drops the repeats."""

from __future__ import annotations

import asyncio
import glob as globlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, replace
from typing import Literal

from wallaroo.connectors import ConnectorSource, FileSource, S3Source
from wallaroo.core.aio import sleep_or_stop
from wallaroo.core.codec import SEND_BATCH, pack_batch, partition_of
from wallaroo.core.errors import WallarooError
from wallaroo.core.frames import TEXT_PROBE, Framing, TruncatedFrameError
from wallaroo.core.names import AppNames, eoi_msg_id, source_sender, tagged
from wallaroo.nats import Nats, Out
from wallaroo_runtime.connectors.framing import (
    LineBatch,
    batches_in,
    file_source_id,
    frames_window_end,
    s3_source_id,
    source_msg_id,
    split_of,
    window_end,
)
from wallaroo_runtime.connectors.progress import ProgressStore, SourceProgress, source_key
from wallaroo_runtime.statestore import S3Store, check_key

log = logging.getLogger("wallaroo.connectors")
BATCH_RECORDS = SEND_BATCH
WINDOW_RECORDS = SEND_BATCH * 16  # records per recorded window: two KV writes per this many
READ_CHUNK = 4 << 20  # bytes of a file read per window at most


class LineTooLongError(WallarooError):
    """A line does not fit in a window (and so not in a NATS message)."""

    def __init__(self, where: str, offset: int, limit: int) -> None:
        self.where, self.offset, self.limit = where, offset, limit
        super().__init__(f"{where}: the line at byte {offset} is longer than {limit} bytes; "
                         "records must fit in a NATS message: split such lines before ingesting")


@dataclass
class Publisher:
    """Publishes windows of one source's batches and keeps its progress."""

    nats: Nats
    names: AppNames
    stage: int
    partitions: int
    store: ProgressStore
    key: str
    progress: SourceProgress

    async def save(self, progress: SourceProgress) -> None:
        await self.store.save(self.key, progress.to_json())
        self.progress = progress

    async def end(self, name: str) -> None:
        """A bounded source read all its input: an end-of-input message on every partition of
        its stage (sending them again is harmless: ends are idempotent), then recorded as
        ended. On the control subjects: an end on the source subjects would be read as records
        (clients write those, so an id there commands nothing); tagged, so that no client can
        have taken their ids first (names.tagged)."""
        sender, tag = source_sender(name), secrets.token_hex(8)
        await self.nats.publish_all([
            Out(self.names.control(self.stage, p), b"", tagged(eoi_msg_id(sender, self.stage, p), tag))
            for p in range(self.partitions)])
        await self.save(replace(self.progress, ended=True))
        log.info("source %s ended: all its input is in the stream", name)

    async def send(self, source_id: str, data: bytes, pos: int, end: int, *, base: int,
                   framing: Framing | None = None) -> None:
        """Publish the records (lines, or `framing`'s frames) of data[pos:end] (data[0] is at
        unit offset `base`): record the window, publish it, wait for every JetStream ack,
        record its end."""
        if base + pos != self.progress.acked:
            msg = f"window starts at {base + pos}, progress is at {self.progress.acked}"
            raise AssertionError(msg)
        planned = self.progress.planned(base + end)
        if planned != self.progress:  # a replayed window is recorded already
            await self.save(planned)
        batches = batches_in(data, pos, end, base=base, size=BATCH_RECORDS, framing=framing)
        await self.nats.publish_all([self._out(source_id, b) for b in batches])
        await self.save(planned.published())

    def _out(self, source_id: str, batch: LineBatch) -> Out:
        plain = source_msg_id(source_id, batch.offset)
        # By id, not round robin: a re-sent batch goes where its first copy went.
        part = partition_of(plain, self.partitions)
        msg_id = source_msg_id(source_id, batch.offset, self.nats.id_tag(plain)) \
            if self.progress.tagged else plain
        return Out(self.names.source(self.stage, part), pack_batch(batch.records), msg_id)


async def run_source(
    nats: Nats, slug: str, stage: int, partitions: int, name: str, cfg: ConnectorSource,
    stop: asyncio.Event, progress_store: ProgressStore,
) -> None:
    """Run the source `name` (stage `stage` of app `slug`) until `stop` is set."""
    key = source_key(slug, name)
    raw = await progress_store.load(key)
    progress = SourceProgress.from_json(raw) if raw else SourceProgress()
    pub = Publisher(nats, AppNames(slug), stage, partitions, progress_store, key, progress)
    log.info("source %s/%s starts at %s", slug, name, progress)
    if progress.ended:  # a job's source that sent all its input: nothing more, ever
        await stop.wait()
        return
    if isinstance(cfg, FileSource) and cfg.is_glob:
        await _run_glob(pub, name, cfg, stop)
    elif isinstance(cfg, FileSource):
        await _run_file(pub, name, cfg, stop)
    else:
        await _run_s3(pub, name, cfg, stop)


# --- files ------------------------------------------------------------------------------------


@dataclass
class _Tail:
    """Decides when an unterminated last line is complete: the file stopped growing. Keeps
    how the file splits (lines or frames), decided once per generation from its start."""

    settle: float
    size: int = -1
    since: float = 0.0
    split: tuple[int, Framing | None] | None = None  # (generation, frames or None: lines)
    warned: int = -1  # the offset of a cut frame last warned about (once, not every poll)

    def settled(self, size: int, now: float) -> bool:
        if size != self.size:
            self.size, self.since = size, now
            return False
        return now - self.since >= self.settle


async def _run_file(pub: Publisher, name: str, cfg: FileSource, stop: asyncio.Event) -> None:
    if cfg.bounded:
        if await _read_bounded(pub, name, cfg, stop):
            await pub.end(name)
            await stop.wait()
        return
    tail = _Tail(cfg.settle)
    while not stop.is_set():
        if not await file_step(pub, name, cfg, tail):
            await sleep_or_stop(stop, cfg.poll)


async def _read_bounded(pub: Publisher, name: str, cfg: FileSource, stop: asyncio.Event) -> bool:
    """Publish the file up to the size it had when first started; False if `stop` came first."""
    if pub.progress.end < 0:
        await pub.save(replace(pub.progress, end=await _bounded_size(cfg.path)))
    tail = _Tail(cfg.settle)
    while not stop.is_set():
        if await file_step(pub, name, cfg, tail):
            continue
        if pub.progress.acked >= pub.progress.end:
            return True
        await sleep_or_stop(stop, cfg.poll)  # the file is gone: it may come back
    return False


async def _run_glob(pub: Publisher, name: str, cfg: FileSource, stop: asyncio.Event) -> None:
    """A job's glob of files: the files matching when it first started, in name order, each
    read as a bounded file (with its own progress), then the end of input."""
    if pub.progress.end < 0:
        files = await asyncio.to_thread(_matching, cfg.path)
        await pub.save(replace(pub.progress, files=[f for f, _ in files], sizes=[n for _, n in files],
                               end=sum(n for _, n in files), unit="0", acked=0))
    for i in range(int(pub.progress.unit or 0), len(pub.progress.files)):
        one = await _file_publisher(pub, i)
        if not await _read_bounded(one, name, _file_of(cfg, pub.progress.files[i]), stop):
            return
        done = pub.progress.acked + pub.progress.sizes[i]
        await pub.save(replace(pub.progress, unit=str(i + 1), acked=done, upto=done))
    await pub.end(name)
    await stop.wait()


def _matching(pattern: str) -> list[tuple[str, int]]:
    found = []
    for path in sorted(globlib.glob(pattern)):
        size = _size(path)
        if size is not None and os.path.isfile(path):
            found.append((path, size))
    if not found:
        log.warning("bounded source %s matches no file: the job reads nothing from it", pattern)
    return found


async def _file_publisher(pub: Publisher, index: int) -> Publisher:
    key = f"{pub.key}.{index}"
    raw = await pub.store.load(key)
    progress = SourceProgress.from_json(raw) if raw else SourceProgress(end=pub.progress.sizes[index])
    return Publisher(pub.nats, pub.names, pub.stage, pub.partitions, pub.store, key, progress)


def _file_of(cfg: FileSource, path: str) -> FileSource:
    return FileSource(path, cfg.decoder, partitions=cfg.partitions, poll=cfg.poll, settle=cfg.settle,
                      bounded=True)


async def _bounded_size(path: str) -> int:
    size = await asyncio.to_thread(_size, path)
    if size is None:
        log.warning("bounded source file %s does not exist: the job reads nothing from it", path)
    return size or 0


async def file_step(pub: Publisher, name: str, cfg: FileSource, tail: _Tail) -> bool:
    """Publish the file's next window; False when there is nothing new (or no file yet)."""
    size = await asyncio.to_thread(_size, cfg.path)
    p = pub.progress
    if size is None:
        return False
    if cfg.bounded and size < max(p.acked, p.upto):
        log.warning("%s shrank to %d bytes while a job read it (read to %d): its input ends there",
                    cfg.path, size, p.acked)
        await pub.save(replace(p, end=p.acked, upto=p.acked))
        return False
    if cfg.bounded:
        size = min(size, p.end)
    if size < max(p.acked, p.upto):
        log.warning("%s shrank to %d bytes (was read to %d): reading it again from the start",
                    cfg.path, size, p.acked)
        await pub.save(SourceProgress(generation=p.generation + 1))
        return True
    source_id = file_source_id(name, cfg.path, p.generation)
    framing = await _file_split(cfg, tail, p.generation, size)
    if framing is False:
        return False
    if p.in_flight:
        data = await asyncio.to_thread(_read_at, cfg.path, p.acked, p.upto - p.acked)
        await pub.send(source_id, data, 0, len(data), base=p.acked, framing=framing)
        return True
    data = await asyncio.to_thread(_read_at, cfg.path, p.acked, min(size - p.acked, READ_CHUNK))
    # A bounded file's end is its end: its unterminated last line is complete without waiting.
    final = p.acked + len(data) == size and (cfg.bounded or tail.settled(size, time.monotonic()))
    end = _window_end(data, framing, final=final)
    if end == 0 and len(data) >= READ_CHUNK:
        raise LineTooLongError(cfg.path, p.acked, READ_CHUNK)
    if end == 0 and final and data and framing is not None:
        _cut_frame(cfg, tail, framing, data, p.acked)
    if end == 0:
        return False
    await pub.send(source_id, data, 0, end, base=p.acked, framing=framing)
    return True


def _cut_frame(cfg: FileSource, tail: _Tail, framing: Framing, data: bytes, at: int) -> None:
    """The file ends inside the frame at `at`: the end of a bounded file is final, an error
    (nothing after it is dropped silently); a followed file may still grow, so it waits,
    warning once."""
    error = TruncatedFrameError(cfg.path, at, framing.needed(data, 0) or framing.header_length,
                                len(data))
    if cfg.bounded:
        raise error
    if tail.warned != at:
        tail.warned = at
        log.warning("%s; waiting for the rest of it", error)


def _window_end(data: bytes, framing: Framing | None, *, final: bool) -> int:
    if framing is None:
        return window_end(data, 0, WINDOW_RECORDS, final=final)
    return frames_window_end(data, 0, WINDOW_RECORDS, framing)


async def _file_split(cfg: FileSource, tail: _Tail, generation: int, size: int
                      ) -> Framing | None | Literal[False]:
    """How the file splits: by its decoder's frames, or (None) by lines when the decoder
    declares no framing or the file is text; False while too little of it exists to tell."""
    framing = cfg.decoder_spec().framing
    if framing is None:
        return None
    if tail.split is None or tail.split[0] != generation:
        if size < framing.header_length:
            return False
        head = await asyncio.to_thread(_read_at, cfg.path, 0, min(size, TEXT_PROBE))
        tail.split = (generation, split_of(framing, head))
    return tail.split[1]


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# --- S3 ---------------------------------------------------------------------------------------


def open_s3(bucket: str, prefix: str, endpoint_url: str | None) -> S3Store:
    """An S3 store for a connector; the region comes from the environment as for runners."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region)


async def _run_s3(pub: Publisher, name: str, cfg: S3Source, stop: asyncio.Event) -> None:
    store = open_s3(cfg.bucket, "", cfg.endpoint_url)
    try:
        if cfg.bounded and pub.progress.end < 0:  # the input: the keys there now
            keys = await store.list(cfg.prefix)
            await pub.save(replace(pub.progress, end=len(keys), last_unit=max(keys, default="")))
        while not stop.is_set():
            for key in await _pending_keys(store, cfg, pub.progress):
                if stop.is_set():
                    return
                await object_step(pub, store, name, cfg, key, stop)
            if cfg.bounded and not stop.is_set():
                await pub.end(name)
                await stop.wait()
                return
            await sleep_or_stop(stop, cfg.poll)
    finally:
        await store.close()


async def _pending_keys(store: S3Store, cfg: S3Source, p: SourceProgress) -> list[str]:
    """Keys under the prefix still to read, in order: after the current one, or it if unfinished."""
    keys = []
    for key in await store.list(cfg.prefix):
        if cfg.bounded and key > p.last_unit:
            continue  # written after the job started: not its input
        if key > p.unit or (key == p.unit and not p.done):
            keys.append(key)
    return [k for k in keys if _readable(cfg, k)]


def _readable(cfg: S3Source, key: str) -> bool:
    try:
        check_key(key)
    except ValueError:
        # Why only a warning: such keys ('a//b', '.hidden') are not app data by our convention.
        log.warning("S3 source s3://%s/%s skips %r: not a plain key", cfg.bucket, cfg.prefix, key)
        return False
    return True


async def object_step(pub: Publisher, store: S3Store, name: str, cfg: S3Source, key: str,
                      stop: asyncio.Event) -> None:
    """Publish the rest of object `key`, window by window, until it is read or `stop`."""
    data = await store.get(key)
    if data is None:
        log.warning("s3://%s/%s vanished before it was read", cfg.bucket, key)
        await pub.save(replace(pub.progress, unit=key, acked=0, upto=0, done=True))
        return
    if pub.progress.unit != key:  # recorded with its first window
        pub.progress = replace(pub.progress, unit=key, acked=0, upto=0, done=False)
    source_id = s3_source_id(name, cfg.bucket, key)
    framing = split_of(cfg.decoder_spec().framing, data[:TEXT_PROBE])
    if pub.progress.in_flight:
        await pub.send(source_id, data, pub.progress.acked, pub.progress.upto, base=0,
                       framing=framing)
    while not stop.is_set():
        pos = pub.progress.acked
        end = _object_window_end(data, pos, framing, f"s3://{cfg.bucket}/{key}")
        if end == pos:  # only empty lines (or nothing) left
            await pub.save(replace(pub.progress, unit=key, acked=len(data), upto=len(data), done=True))
            return
        await pub.send(source_id, data, pos, end, base=0, framing=framing)


def _object_window_end(data: bytes, pos: int, framing: Framing | None, where: str) -> int:
    """The next window of a whole object; a frame cut by its end is an error."""
    if framing is None:
        return window_end(data, pos, WINDOW_RECORDS, final=True)
    end = frames_window_end(data, pos, WINDOW_RECORDS, framing)
    if end == pos < len(data):
        need = framing.needed(data, pos) or framing.header_length
        raise TruncatedFrameError(where, pos, need, len(data) - pos)
    return end
