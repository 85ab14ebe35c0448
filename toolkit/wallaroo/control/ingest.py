"""`wallaroo send`: records into an app's source, in batches with deterministic message ids,
so that sending the same file (or producer) again never ingests a record twice."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from wallaroo.core import codec
from wallaroo.core.codec import SEND_BATCH
from wallaroo.core.errors import RecordTooLargeError, UnknownNameError
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
from wallaroo.nats import Nats, Out

PAYLOAD_MARGIN = 1024  # headers and framing on top of a batch
SEND_WINDOW = 64


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
    batch_size: int = SEND_BATCH, progress: Any = None,
) -> Sent:
    """Publish records to a source in batches with ids `i:<producer>:<n>`: how many were
    sent, and how many of them were new (not dropped as duplicates of an earlier send)."""
    stage, parts = source_stage(manifest, source)
    names = AppNames(manifest.slug)
    window: list[Out] = []
    sizes: dict[str, int] = {}  # msg id -> records it carries
    sent = new = 0
    limit = nats.max_payload - PAYLOAD_MARGIN
    for n, batch in enumerate(codec.chunked(records, batch_size)):
        payloads = fit(batch, limit, sent)
        for k, payload in enumerate(payloads):
            msg_id = f"i:{producer}:{n}" if len(payloads) == 1 else f"i:{producer}:{n}.{k}"
            window.append(Out(names.source(stage, n % parts), payload, msg_id))
            sizes[msg_id] = len(codec.unpack_batch(payload)) if len(payloads) > 1 else len(batch)
        sent += len(batch)
        if len(window) >= SEND_WINDOW:
            new += _new(await nats.publish_all(window), window, sizes)
            window = []
            if progress:
                progress(sent)
    new += _new(await nats.publish_all(window), window, sizes)
    if progress:
        progress(sent)
    return Sent(sent, new)


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
