"""How far a connector source has published, kept in NATS KV so any runner can resume it.

One JSON value per source under `<app>.src.<source>` in the WL_CONNECTORS bucket. Besides
the acknowledged offset it names the window in flight (`upto`): written before a window is
published, so a restart re-sends exactly those batches (same bytes, same ids: duplicates the
stream drops) instead of a differently cut window whose ids would hide new lines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from wallaroo.core.names import CONNECTORS_BUCKET, source_progress_key
from wallaroo.nats import Nats
from wallaroo_runtime.connectors.framing import safe_token


@dataclass(frozen=True)
class SourceProgress:
    unit: str = ""  # S3: the object being read ("" before the first); files: unused
    generation: int = 0  # files: bumped when the file shrinks (read again from the start)
    acked: int = 0  # every record before this byte offset of `unit` is in the stream
    upto: int = 0  # > acked: the window [acked, upto) may be partly published
    done: bool = False  # S3: `unit` was read to its end
    # Bounded sources (jobs): where the input ends, fixed when the source first starts (a
    # file's size; the last S3 key), and whether its end of input was sent.
    end: int = -1
    last_unit: str = ""
    ended: bool = False
    # A glob of files (a job's): the files and their sizes when it first started; `unit` is
    # the index of the file being read, `acked` the bytes of the files read before it. Each
    # file keeps its own progress under "<key>.<index>".
    files: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    # Batch ids carry the runners' tag (Nats.id_tag). A progress recorded before tags existed
    # keeps plain ids while the window it had in flight is re-sent (with the ids it had), and
    # takes tags from its next window on.
    tagged: bool = True

    @property
    def in_flight(self) -> bool:
        return self.upto > self.acked

    def planned(self, upto: int) -> SourceProgress:
        return replace(self, upto=upto, tagged=self.tagged or not self.in_flight)

    def published(self) -> SourceProgress:
        return replace(self, acked=max(self.acked, self.upto))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SourceProgress:
        return cls(**{"tagged": False, **json.loads(raw)})


class ProgressStore(Protocol):
    """Where source progress lives (NATS KV on a cluster; a dict in unit tests)."""

    async def load(self, key: str) -> bytes | None: ...

    async def save(self, key: str, value: bytes) -> None: ...


class KvProgress:
    """Progress in a NATS KV bucket (created on first save)."""

    def __init__(self, nats: Nats, bucket: str = CONNECTORS_BUCKET) -> None:
        self.nats, self.bucket = nats, bucket

    async def load(self, key: str) -> bytes | None:
        return await self.nats.kv_get(self.bucket, key)

    async def save(self, key: str, value: bytes) -> None:
        await self.nats.kv_put(self.bucket, key, value)


source_key = source_progress_key  # its lease key in WL_LEASES too


def sink_key(slug: str, sink: str) -> str:
    """The lease key of a connector sink."""
    return f"{slug}.sink.{safe_token(sink)}"


def sink_durable(sink: str) -> str:
    """The durable consumer a sink reads the app's output stream with."""
    return f"sink_{safe_token(sink)}"
