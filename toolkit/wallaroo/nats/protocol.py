"""What the rest of the code needs from NATS, as types and Protocols that do not import nats-py.

`wallaroo.nats.client.Nats` implements them on a real server; `wallaroo.nats.memory.MemoryNats`
implements the partition worker's part in memory, for unit tests of the commit protocol and for
`wallaroo.testing`. Code that takes a `WorkerNats` runs on either."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

CREDS_ENV = "WALLAROO_CREDS"  # the nkey seed file a process connects with by default
TLS_CA_ENV = "WALLAROO_TLS_CA"  # the CA a process verifies tls:// servers with by default

MSG_ID = "Nats-Msg-Id"
# How long a stream remembers a message id and drops a repeat of it, s: the whole of a source's
# dedup (runners do not trust the ids of records clients publish, see worker._obeys).
DUPLICATE_WINDOW = 300.0


@dataclass(frozen=True)
class InMsg:
    """A message fetched from a pull consumer; `ack` acknowledges it to its consumer."""

    data: bytes
    msg_id: str
    stream_seq: int
    consumer_seq: int
    deliveries: int
    pending: int
    ack: Callable[[], Awaitable[None]]
    # Tell the server the message is still being worked on (resets its ack_wait).
    in_progress: Callable[[], Awaitable[None]] | None = None
    timestamp: float = 0.0  # when JetStream stored it (seconds since the epoch)
    # Hand it back unprocessed: the server delivers it again at once (to any consumer's reader).
    nak: Callable[[], Awaitable[None]] | None = None
    # Where it was published: who may have written it (a consumer may read several subjects).
    subject: str = ""


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True)
class StoredMsg:
    seq: int
    subject: str
    data: bytes
    msg_id: str
    kv_operation: str = ""  # DEL or PURGE: a KV delete marker

    @property
    def deleted(self) -> bool:
        """Is this a KV delete or purge marker (the key is gone)?"""
        return self.kv_operation in ("DEL", "PURGE")


@dataclass(frozen=True)
class Out:
    """A message to publish into a stream, with its deterministic dedup id."""

    subject: str
    payload: bytes
    msg_id: str


class Consumer(Protocol):
    """A durable pull consumer delivering its subjects in stream order."""

    async def fetch(self, batch: int, timeout: float) -> list[InMsg]:
        """Up to `batch` messages, waiting at most `timeout` for the first (none: [])."""
        ...

    async def close(self) -> None: ...


class WorkerNats(Protocol):
    """What a partition worker (the commit loop) and its checkpoints need from NATS."""

    @property
    def max_payload(self) -> int: ...

    async def append_fenced(
        self, stream: str, subject: str, payload: bytes, msg_id: str, last_seq: int
    ) -> int:
        """Append only if `subject`'s last message is still `last_seq`, else FencedError."""
        ...

    async def publish_all(self, outs: Sequence[Out]) -> set[str]:
        """Publish every message (deduplicated by its id) and wait for every ack; the ids the
        stream had already (duplicates it dropped)."""
        ...

    async def last_on_subject(self, stream: str, subject: str) -> StoredMsg | None: ...

    def read_subject(
        self, stream: str, subject: str, upto: int, start: int = 1, complete: bool = False,
    ) -> AsyncIterator[StoredMsg]: ...

    async def msg_exists(self, stream: str, seq: int) -> bool: ...

    async def purge_subject_below(self, stream: str, subject: str, seq: int) -> None: ...

    async def fresh_consumer(
        self, stream: str, durable: str, subject: str | Sequence[str], start_seq: int | None = None,
        *, ack_wait: float = 30.0, max_ack_pending: int = 20_000,
    ) -> Consumer:
        """A new durable pull consumer of `subject` (or of several subjects, in one stream order)."""
        ...
