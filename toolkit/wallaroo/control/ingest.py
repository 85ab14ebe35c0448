"""`wallaroo send`: records into an app's source, in batches with deterministic message ids,
so that sending the same file (or producer) again within the source's duplicate window
(DUPLICATE_WINDOW) never ingests a record twice."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from wallaroo.core import codec
from wallaroo.core.aio import doubling
from wallaroo.core.codec import SEND_BATCH
from wallaroo.core.errors import BacklogStalledError, RecordTooLargeError, UnknownNameError
from wallaroo.core.frames import (
    Framing,
    TruncatedFrameError,
    check_file,
    file_frames,
    framing_of,
    is_text_file,
)
from wallaroo.core.names import AppNames
from wallaroo.core.wire import Manifest
from wallaroo.nats import DUPLICATE_WINDOW, Nats, Out

PAYLOAD_MARGIN = 1024  # headers and framing on top of a batch
SEND_WINDOW = 64
INPUT_BACKLOG = 256  # `wallaroo dev --input`'s Backlog.limit: about a second of word count
ROOM_POLL = (0.005, 0.1)  # first and longest pause between looks at a full backlog, s
# Backlog.stall's default, s: a stop is told apart from a slow batch in minutes, and well
# inside the 5-minute duplicate window, so that the same records sent again at once are still
# dropped as repeats for the last minutes of what went before.
STALL = 120.0


@dataclass(frozen=True)
class Backlog:
    """How far a sender may run ahead of the app: at most `limit` of the source's messages
    (each a batch of up to SEND_BATCH records, within the server's max payload: a bound in
    messages, not bytes) stored and not yet processed, else the next window waits. Why: what
    a sender has published and the app has not taken sits in nats-server, which keeps a
    stored block in memory for 10 s after its last use, so a whole file published at once
    costs it memory in proportion to the file; pulled at the app's pace, as a Bytewax file
    source is, it holds a bounded number of messages whatever the file's size (README, The
    dev loop). The wait fails with BacklogStalledError once the count has not fallen for
    `stall` seconds (no runner taking the source)."""

    limit: int
    stall: float = STALL

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.stall > 0:
            msg = f"Backlog(limit={self.limit}, stall={self.stall}): both must be above 0"
            raise ValueError(msg)


def source_stage(manifest: Manifest, source: str | None) -> tuple[int, int]:
    """(stage index, partitions) of the named source (or of the only one)."""
    sources = {s.source: s for s in manifest.stages if s.source is not None}
    if source is None and len(sources) == 1:
        source = next(iter(sources))
    if source not in sources:
        raise UnknownNameError(kind="source", name=str(source), known=sorted(sources))
    st = sources[source]
    return st.index, st.partitions


def source_framing(manifest: Manifest, source: str | None) -> Framing | None:
    """The framing the source's decoder declares (None: its records are lines)."""
    st = manifest.stages[source_stage(manifest, source)[0]]
    return framing_of(st.header_length, st.length_fmt)


def file_records(path: Path, framing: Framing | None) -> Iterator[bytes]:
    """The file's records: its frames when the source's decoder declares `framing`, else its
    non-empty lines. A text file that is not a whole run of frames is read by lines: Wallaroo's
    sender framed each line of a text file, so ported apps declare framing for text input too.
    A binary file cut inside a frame fails here, before anything is sent."""
    if framing is None:
        return file_lines(path)
    try:
        check_file(path, framing)
    except TruncatedFrameError:
        if is_text_file(path):
            return file_lines(path)
        raise
    return (payload for _, payload in file_frames(path, framing))


def file_producer_id(path: Path) -> str:
    """Same file content -> same message ids, so sending a file again never duplicates."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "f" + h.hexdigest()[:20]


def fit(batch: list[bytes], limit: int, first: int = 0) -> list[bytes]:
    """`batch` packed into as few messages as fit in `limit` bytes each (split in halves, so
    the same input always gives the same messages and ids). `first`: the index of the batch's
    first record in the whole send, for the error."""
    payload = codec.pack_batch(batch)
    if len(payload) <= limit:
        return [payload]
    if len(batch) == 1:
        raise RecordTooLargeError(first, len(batch[0]), limit)
    half = len(batch) // 2
    return fit(batch[:half], limit, first) + fit(batch[half:], limit, first + half)


class Sent(NamedTuple):
    records: int
    new: int  # the others were in the stream already (the same producer id sent them)


async def send(
    nats: Nats, manifest: Manifest, source: str | None, records: Iterable[bytes], producer: str,
    batch_size: int = SEND_BATCH, progress: Any = None, backlog: Backlog | None = None,
) -> Sent:
    """Publish records to a source in batches with ids `i:<producer>:<n>`: how many were
    sent, and how many of them were new (not dropped as duplicates of an earlier send).
    With a `backlog`, each window waits until the source has room for it."""
    stage, parts = source_stage(manifest, source)
    names = AppNames(manifest.slug)
    window: list[Out] = []
    sizes: dict[str, int] = {}  # msg id -> records it carries
    sent = new = 0
    limit = nats.max_payload - PAYLOAD_MARGIN
    room = None if backlog is None else _room(nats, names, stage, manifest, backlog, producer)
    window_size = SEND_WINDOW if backlog is None else min(SEND_WINDOW, backlog.limit)
    for n, batch in enumerate(codec.chunked(records, batch_size)):
        payloads = fit(batch, limit, sent)
        for k, payload in enumerate(payloads):
            msg_id = f"i:{producer}:{n}" if len(payloads) == 1 else f"i:{producer}:{n}.{k}"
            window.append(Out(names.source(stage, n % parts), payload, msg_id))
            sizes[msg_id] = len(codec.unpack_batch(payload)) if len(payloads) > 1 else len(batch)
        sent += len(batch)
        if len(window) >= window_size:
            if room is not None:
                await room(len(window), sent - sum(sizes.values()))
            new += _new(await nats.publish_all(window), window, sizes)
            window = []
            if progress:
                progress(sent)
    if room is not None and window:
        await room(len(window), sent - sum(sizes.values()))
    new += _new(await nats.publish_all(window), window, sizes)
    if progress:
        progress(sent)
    return Sent(sent, new)


def _room(nats: Nats, names: AppNames, stage: int, manifest: Manifest, backlog: Backlog,
          producer: str) -> Callable[[int, int], Awaitable[None]]:
    """What waits for room for a window of n messages in the source's partitions, `sent`
    records having gone before it (for the error)."""
    source = manifest.stages[stage].source or ""

    def count() -> Awaitable[int]:
        return nats.subject_count(names.data_stream, names.sources(stage))

    async def wait(n: int, sent: int) -> None:
        if not await wait_for_room(count, n, backlog):
            waiting = await count()
            raise BacklogStalledError(source, waiting, backlog.stall, sent, producer,
                                      DUPLICATE_WINDOW)

    return wait


async def wait_for_room(count: Callable[[], Awaitable[int]], n: int, backlog: Backlog,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> bool:
    """True once `count()` + n fits in the backlog's limit (a window larger than the limit
    waits for an empty backlog); False once the count has not fallen from one look to the next
    for `backlog.stall` s (any fall is the app taking some: other senders may refill it as
    fast). Looks again after pauses doubling from ROOM_POLL[0] to [1]: the app takes a window
    in well under a second, and a stopped app is told apart in minutes."""
    pauses = doubling(*ROOM_POLL)
    last, since = None, clock()
    while (waiting := await count()) and waiting + n > backlog.limit:
        if last is not None and waiting < last:
            since = clock()
        elif clock() - since >= backlog.stall:
            return False
        last = waiting
        await sleep(next(pauses))
    return True


def _new(dropped: set[str], window: list[Out], sizes: dict[str, int]) -> int:
    """Records in the window's messages that the stream stored (it dropped `dropped`)."""
    return sum(n for o in window if (n := sizes.pop(o.msg_id)) and o.msg_id not in dropped)


def file_lines(path: Path) -> Iterator[bytes]:
    """The file's non-empty lines, without line endings."""
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def fresh_producer_id() -> str:
    return "p" + uuid.uuid4().hex[:20]
