"""Connector sinks: deliver each output message of a sink (one commit's outputs) from the app's
output stream to a file, S3, an HTTP endpoint or a NATS subject, then ack it.

A sink reads with its own durable consumer (`sink_<name>`), one message at a time in stream
order. On every start the consumer is recreated at the first message not yet delivered (the
FileSink's sidecar, else the consumer's ack floor), so what a crashed sink held comes back at
once and in order. Delivery is idempotent per message (file commit offset, deterministic S3
key, part name, Idempotency-Key, Nats-Msg-Id), so a redelivered message is never written twice.

The only module that imports aiohttp (ruff's banned-api holds the line)."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from wallaroo.connectors import ConnectorSink, FileSink, HttpSink, NatsSink, PartsSink, S3Sink
from wallaroo.core import codec
from wallaroo.core.aio import unless_stopped
from wallaroo.core.errors import WallarooError
from wallaroo.core.names import CONNECTORS_BUCKET, AppNames
from wallaroo.nats import InMsg, Nats
from wallaroo_runtime.connectors import sidecar
from wallaroo_runtime.connectors.framing import (
    content,
    external_id,
    is_replayed,
    note_delivered,
    part_name,
    s3_object_key,
)
from wallaroo_runtime.connectors.parts import LocalParts, PartStore, S3Parts
from wallaroo_runtime.connectors.progress import sink_durable
from wallaroo_runtime.connectors.sources import open_s3

if TYPE_CHECKING:
    import aiohttp  # noqa: TID251 - this module owns the HTTP client import

log = logging.getLogger("wallaroo.connectors")
ACK_WAIT = 120.0  # longer than a message's bounded HTTP retries: no redelivery meanwhile
FETCH = 64
FETCH_TIMEOUT = 1.0  # a stop does not wait it out: the fetch in hand is dropped
HTTP_ATTEMPTS = 6
HTTP_BACKOFF = (0.2, 5.0)  # first wait, longest wait (doubling, with jitter)


class SinkUnavailableError(WallarooError, ConnectionError):
    """An external system did not take an output message after every retry. The message stays
    unacked; the runner restarts the sink, which delivers it again first."""

    def __init__(self, sink: str, target: str, attempts: int, last: str) -> None:
        self.sink, self.target, self.attempts = sink, target, attempts
        super().__init__(f"sink {sink!r}: {target} failed {attempts} times, last with: {last}. "
                         "Check that it is reachable from the runner; nothing is skipped meanwhile")


@dataclass(frozen=True)
class OutputMsg:
    """One message of the output stream: the outputs of one commit of one partition."""

    seq: int
    msg_id: str
    outputs: list[bytes]

    @classmethod
    def from_in(cls, m: InMsg) -> OutputMsg:
        return cls(m.stream_seq, m.msg_id, codec.unpack_batch(m.data))


@dataclass
class SinkStats:
    """A sink's delivery counts on this runner, for `wallaroo status`."""

    running: bool = False  # reading the output stream now (holds the sink's lease)
    delivered: int = 0  # output messages handed to the external system
    skipped: int = 0  # already delivered (redelivery, or a re-publish after the dedup window)
    rejected: int = 0  # refused for good by the external system (HTTP 4xx): logged, acked
    last_seq: int = 0  # output stream seq of the newest message handled
    pending: int = 0  # output messages behind it, as of then


class Delivery(Protocol):
    """One kind of external system."""

    async def open(self, nats: Nats, names: AppNames, durable: str) -> int:
        """Prepare; the stream sequence to resume reading at."""
        ...

    def delivered(self, out: OutputMsg) -> bool:
        """True if `out` was delivered already (skip it)."""
        ...

    async def deliver(self, out: OutputMsg) -> bool:
        """Deliver `out`; False if the system refused it for good."""
        ...

    async def close(self) -> None: ...


async def run_sink(nats: Nats, slug: str, name: str, cfg: ConnectorSink, stop: asyncio.Event,
                   stats: SinkStats | None = None) -> None:
    """Deliver sink `name` of app `slug` until `stop` is set. Raises SinkUnavailableError (or
    the store's error) when the external system stays down: restart it then."""
    names, durable, stats = AppNames(slug), sink_durable(name), stats or SinkStats()
    delivery = delivery_for(slug, name, cfg)
    try:
        start = await delivery.open(nats, names, durable)
        log.info("sink %s/%s starts at output seq %d", slug, name, start)
        await _warn_if_dropped(nats, names, name, start)
        # What status shows until the first message: where this sink stands (a runner that
        # took over after everything was delivered has handled all there is).
        stats.last_seq = max(stats.last_seq, start - 1)
        consumer = await nats.fresh_consumer(names.out_stream, durable, names.out(name), start,
                                             ack_wait=ACK_WAIT, max_ack_pending=FETCH)
        stats.running = True
        try:
            while not stop.is_set():
                for m in await unless_stopped(stop, consumer.fetch(FETCH, FETCH_TIMEOUT)):
                    await handle(delivery, m, stats)
        finally:
            await consumer.close()
    finally:
        stats.running = False
        await delivery.close()


async def _warn_if_dropped(nats: Nats, names: AppNames, name: str, start: int) -> None:
    """Outputs the app's retention dropped before this sink delivered them are lost to it:
    said once, loudly, with the way to keep more."""
    first = await nats.stream_first_seq(names.out_stream)
    if start < first:
        log.error("sink %s/%s: outputs from seq %d to %d were dropped by the app's retention "
                  "limits before this sink delivered them; raise wallaroo.Retention"
                  "(output_max_age=..., output_max_bytes=...) to ride out longer sink outages",
                  names.slug, name, start, first - 1)


async def handle(delivery: Delivery, m: InMsg, stats: SinkStats) -> None:
    """Deliver one message (unless delivered already), then ack it."""
    out = OutputMsg.from_in(m)
    if delivery.delivered(out):
        stats.skipped += 1
    elif await delivery.deliver(out):
        stats.delivered += 1
    else:
        stats.rejected += 1
    await m.ack()
    stats.last_seq, stats.pending = m.stream_seq, m.pending


def delivery_for(slug: str, name: str, cfg: ConnectorSink) -> Delivery:
    if isinstance(cfg, FileSink):
        return FileDelivery(Path(cfg.path))
    if isinstance(cfg, S3Sink):
        return S3Delivery(cfg)
    if isinstance(cfg, HttpSink):
        return HttpDelivery(slug, name, cfg)
    if isinstance(cfg, PartsSink):
        return PartsDelivery(slug, cfg)
    return NatsDelivery(slug, cfg)


class _Watermarked:
    """Skips outputs a partition re-published after the dedup window, seen in this run."""

    def __init__(self) -> None:
        self.watermarks: dict[str, int] = {}

    def delivered(self, out: OutputMsg) -> bool:
        return is_replayed(out.msg_id, self.watermarks)

    def noted(self, out: OutputMsg) -> None:
        self.watermarks = note_delivered(out.msg_id, self.watermarks)


async def _resume_at_ack_floor(nats: Nats, names: AppNames, durable: str) -> int:
    """Where the sink's consumer stopped acking. The floor is also kept in KV: if the consumer
    is gone (a rebuild deleted it, then could not create it through a meta election), the
    sink resumes there instead of re-delivering the whole output stream."""
    key = f"{names.slug}.{durable}"
    floor = await nats.consumer_ack_floor(names.out_stream, durable)
    if floor is None:
        kept = await nats.kv_get(CONNECTORS_BUCKET, key)
        return int(kept) + 1 if kept else 1
    await nats.kv_put(CONNECTORS_BUCKET, key, str(floor).encode())
    return floor + 1


# --- file -------------------------------------------------------------------------------------


# Why: a cancelled sink's write goes on in its thread; a sink restarted in this process must
# not recover (truncate) the file under it.
_FILE_LOCKS: dict[Path, threading.Lock] = {}


def _file_lock(path: Path) -> threading.Lock:
    return _FILE_LOCKS.setdefault(path.resolve(), threading.Lock())


class SinkFencedError(WallarooError):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path} was committed to by another writer: this sink stops")


class FileDelivery:
    """Appends to a file; see sidecar.py for why this is exactly once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = _file_lock(path)
        self.commit = sidecar.FileCommit()

    async def open(self, nats: Nats, names: AppNames, durable: str) -> int:
        self.commit = await asyncio.to_thread(self._recover)
        last = await nats.stream_last_seq(names.out_stream)
        if self.commit.seq > last:
            # The output stream was deleted and made again: its sequences start over.
            log.warning("%s: its commit is at output seq %d but %s ends at %d: starting over "
                        "(appending)", self.path, self.commit.seq, names.out_stream, last)
            self.commit = sidecar.FileCommit(offset=self.commit.offset)
        return self.commit.seq + 1

    def delivered(self, out: OutputMsg) -> bool:
        return self.commit.delivered(out.seq, out.msg_id)

    async def deliver(self, out: OutputMsg) -> bool:
        self.commit = await asyncio.to_thread(self.write, out)
        return True

    def _recover(self) -> sidecar.FileCommit:
        with self.lock:
            return sidecar.recover(self.path)

    def write(self, out: OutputMsg) -> sidecar.FileCommit:
        """Both durable steps for one message (tests call them one by one to crash between)."""
        with self.lock:
            if sidecar.load(self.path) != self.commit:
                # The sidecar is the file's fence: another writer committed since we last did.
                raise SinkFencedError(str(self.path))
            offset = sidecar.append(self.path, content(out.outputs))
            commit = self.commit.advance(offset, out.seq, out.msg_id)
            sidecar.save(self.path, commit)
            return commit

    async def close(self) -> None:
        """Nothing held open: every write opens, fsyncs and closes the file."""


# --- S3 ---------------------------------------------------------------------------------------


class S3Delivery(_Watermarked):
    """One object per output message at a key derived from it: a redelivery rewrites it."""

    def __init__(self, cfg: S3Sink) -> None:
        super().__init__()
        self.store = open_s3(cfg.bucket, cfg.prefix, cfg.endpoint_url)

    async def open(self, nats: Nats, names: AppNames, durable: str) -> int:
        return await _resume_at_ack_floor(nats, names, durable)

    async def deliver(self, out: OutputMsg) -> bool:
        # S3Store retries transient errors, then raises: the sink restarts, nothing skipped.
        await self.store.put(s3_object_key(out.seq, out.msg_id), content(out.outputs))
        self.noted(out)
        return True

    async def close(self) -> None:
        await self.store.close()


# --- parts ------------------------------------------------------------------------------------


class PartsDelivery:
    """One part per output message, named from its msg id; a part already there is skipped
    (see PartsSink and parts.py)."""

    def __init__(self, slug: str, cfg: PartsSink) -> None:
        self.slug, self.suffix = slug, cfg.suffix
        s3 = cfg.s3
        self.store: PartStore = (S3Parts(*s3, cfg.endpoint_url) if s3 is not None
                                 else LocalParts(Path(cfg.target)))
        self.parts: set[str] = set()  # the app's parts in the target (listed, then written)

    async def open(self, nats: Nats, names: AppNames, durable: str) -> int:
        self.parts = await self.store.existing(self.slug)
        return await _resume_at_ack_floor(nats, names, durable)

    def delivered(self, out: OutputMsg) -> bool:
        return self._name(out) in self.parts

    async def deliver(self, out: OutputMsg) -> bool:
        if not out.outputs:
            # A commit without outputs for this sink (a job's end-of-input commit has one):
            # no empty part for readers to step over.
            return True
        name = self._name(out)
        await self.store.write(name, content(out.outputs))
        self.parts.add(name)
        return True

    def _name(self, out: OutputMsg) -> str:
        return part_name(self.slug, out.seq, out.msg_id, self.suffix)

    async def close(self) -> None:
        await self.store.close()


# --- HTTP -------------------------------------------------------------------------------------


class HttpDelivery(_Watermarked):
    """POST with `Idempotency-Key: <app>:<msg id>`; bounded retries of transient failures."""

    def __init__(self, slug: str, name: str, cfg: HttpSink) -> None:
        super().__init__()
        self.slug, self.name, self.cfg = slug, name, cfg
        self.session: aiohttp.ClientSession | None = None

    async def open(self, nats: Nats, names: AppNames, durable: str) -> int:
        # Imported here: aiohttp was a tenth of a second of every runner's start, HTTP sink
        # or not.
        import aiohttp  # noqa: TID251 - this module owns the HTTP client import

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout))
        return await _resume_at_ack_floor(nats, names, durable)

    async def deliver(self, out: OutputMsg) -> bool:
        body, last = content(out.outputs), ""
        for attempt in range(1, HTTP_ATTEMPTS + 1):
            status, last = await self._post(external_id(self.slug, out.msg_id), body)
            if status is not None and status < 400:
                self.noted(out)
                return True
            if status is not None and status < 500 and status != 429:
                log.error("sink %r: %s refused output seq %d (id %s) with %s; skipped for good",
                          self.name, self.cfg.url, out.seq, out.msg_id, last)
                return False
            if attempt < HTTP_ATTEMPTS:
                await asyncio.sleep(_backoff(attempt))
        raise SinkUnavailableError(self.name, self.cfg.url, HTTP_ATTEMPTS, last)

    async def _post(self, key: str, body: bytes) -> tuple[int | None, str]:
        """(status, description); status None when no answer came (connection, timeout)."""
        assert self.session is not None, "open() first"
        headers = {"Idempotency-Key": key, "Content-Type": "application/octet-stream"}
        import aiohttp  # noqa: TID251 - imported by open() already: a lookup

        try:
            async with self.session.post(self.cfg.url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status, f"HTTP {resp.status} {resp.reason}"
        except (aiohttp.ClientError, TimeoutError) as err:
            return None, f"{type(err).__name__}: {err}"

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _backoff(attempt: int) -> float:
    # Jitter: sinks of many apps that lost one endpoint must not retry in step.
    return min(HTTP_BACKOFF[1], HTTP_BACKOFF[0] * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


# --- NATS -------------------------------------------------------------------------------------


class NatsDelivery(_Watermarked):
    """JetStream publish (acked, deduplicated) when a stream captures the subject, else core."""

    def __init__(self, slug: str, cfg: NatsSink) -> None:
        super().__init__()
        self.slug, self.subject = slug, cfg.subject
        self.nats: Nats | None = None
        self.stream: str | None = None

    async def open(self, nats: Nats, names: AppNames, durable: str) -> int:
        self.nats = nats
        self.stream = await nats.stream_for_subject(self.subject)
        log.info("NATS sink to %s: %s", self.subject,
                 f"JetStream stream {self.stream}" if self.stream else "core NATS (no stream captures it)")
        return await _resume_at_ack_floor(nats, names, durable)

    async def deliver(self, out: OutputMsg) -> bool:
        assert self.nats is not None, "open() first"
        payload, msg_id = content(out.outputs), external_id(self.slug, out.msg_id)
        if self.stream is not None:
            await self.nats.publish(self.subject, payload, msg_id)
        else:
            await self.nats.core_publish(self.subject, payload, msg_id)
        self.noted(out)
        return True

    async def close(self) -> None:
        """The connection belongs to the caller."""
