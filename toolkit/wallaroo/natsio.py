"""The one module that talks to NATS (nats-py). Everything else uses these typed calls.

Why a wrapper: nats-py's publish_async futures never time out, fetch() raises on an empty
batch, and a fenced append surfaces as a generic APIError; here each becomes what callers
need (a bounded wait with same-id retry, an empty list, a FencedError)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import nats  # noqa: TID251 - this module is the owner of the nats import
import nats.errors  # noqa: TID251
import nats.js.api as jsapi  # noqa: TID251
import nats.js.errors as jserr  # noqa: TID251

from wallaroo.errors import FencedError, NatsUnreachableError

log = logging.getLogger("wallaroo.nats")
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071
PUBLISH_TIMEOUT = 5.0
# Why a time budget, not a count: a stream without a leader answers at once (no responders)
# for the whole election, which takes nats-server 4-9 s; a fixed count gives up first.
PUBLISH_PATIENCE = 30.0


@dataclass(frozen=True)
class InMsg:
    """A message fetched from a pull consumer."""

    data: bytes
    msg_id: str
    stream_seq: int
    consumer_seq: int
    deliveries: int
    pending: int
    raw: Any

    async def ack(self) -> None:
        await self.raw.ack()


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


@dataclass(frozen=True)
class Out:
    """A message to publish into a stream, with its deterministic dedup id."""

    subject: str
    payload: bytes
    msg_id: str


def replicas() -> int:
    """JetStream replicas for every stream and bucket the toolkit creates: 1 on one server,
    3 on a cluster (`WALLAROO_REPLICAS=3`), so losing a node loses nothing."""
    return int(os.environ.get("WALLAROO_REPLICAS", "1"))


RETRYABLE = (asyncio.TimeoutError, nats.errors.TimeoutError, jserr.NoStreamResponseError,
             jserr.ServiceUnavailableError)


def _backoff(patience: float = PUBLISH_PATIENCE) -> Iterator[float]:
    """Delays between tries: growing to 1 s, until `patience` seconds have passed."""
    deadline = time.monotonic() + patience
    delay = 0.05
    while time.monotonic() < deadline:
        yield delay
        delay = min(delay * 2, 1.0)


# Why callbacks: nats-py's defaults print full tracebacks to stderr on every connection error.
async def _log_error(err: Exception) -> None:
    log.warning("nats: %s: %s", type(err).__name__, err)


async def _log_disconnect() -> None:
    log.info("nats: disconnected")  # also on a deliberate close: not a warning


async def _log_reconnect() -> None:
    log.warning("nats: reconnected")


class PullConsumer:
    def __init__(self, sub: Any, stream: str, name: str) -> None:
        self._sub, self.stream, self.name = sub, stream, name

    async def fetch(self, batch: int, timeout: float) -> list[InMsg]:
        """Up to `batch` messages, waiting at most `timeout` for the first. Why two pulls: the
        server holds a batched pull with an expiry until the batch is full, so a partly
        filled batch would wait out the whole timeout. The first message says how many more
        are pending; the second pull asks for exactly those, which the server sends at once."""
        first = await self._pull(1, timeout)
        if not first:
            return first
        more = min(batch - 1, first[0].pending)
        return first + (await self._pull(more, timeout) if more > 0 else [])

    async def _pull(self, batch: int, timeout: float) -> list[InMsg]:
        try:
            msgs = await self._sub.fetch(batch=batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        return [_in_msg(m) for m in msgs]

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
            await self._sub.unsubscribe()


def _in_msg(m: Any) -> InMsg:
    md = m.metadata
    headers = m.headers or {}
    seq = md.sequence
    return InMsg(m.data, headers.get(MSG_ID, ""), seq.stream, seq.consumer, md.num_delivered,
                 md.num_pending or 0, m)


class Nats:
    """A connection with JetStream, KV and object store helpers."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        self._buckets: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, name: str = "wallaroo", *, persistent: bool = True) -> Nats:
        """`persistent` (runners): reconnect forever. Otherwise (CLI commands) fail fast with
        an error that says where NATS was looked for."""
        try:
            nc = await nats.connect(
                servers=[url], name=name, max_reconnect_attempts=-1 if persistent else 2,
                reconnect_time_wait=0.2, connect_timeout=2, allow_reconnect=True,
                error_cb=_log_error, disconnected_cb=_log_disconnect,
                reconnected_cb=_log_reconnect,
            )
        except (TimeoutError, nats.errors.NoServersError, OSError) as err:
            raise NatsUnreachableError(url) from err
        return cls(nc)

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (its max_payload)."""
        return int(self.nc.max_payload)

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.ConnectionClosedError):
            await self.nc.drain()

    # --- streams -------------------------------------------------------------------------

    async def ensure_stream(
        self, name: str, subjects: list[str], *, work_queue: bool = False,
        dedup_window: float = 300.0, max_msg_size: int = -1,
    ) -> None:
        cfg = jsapi.StreamConfig(
            name=name, subjects=subjects, storage=jsapi.StorageType.FILE,
            retention=jsapi.RetentionPolicy.WORK_QUEUE if work_queue else jsapi.RetentionPolicy.LIMITS,
            duplicate_window=dedup_window, max_msg_size=max_msg_size, allow_direct=True,
            num_replicas=replicas(),
        )
        try:
            await self.js.stream_info(name)
        except jserr.NotFoundError:
            await self.js.add_stream(cfg)

    async def stream_last_seq(self, stream: str) -> int:
        info = await self.js.stream_info(stream)
        return int(info.state.last_seq)

    async def delete_stream(self, stream: str) -> None:
        with contextlib.suppress(jserr.NotFoundError):
            await self.js.delete_stream(stream)

    async def append_fenced(
        self, stream: str, subject: str, payload: bytes, msg_id: str, last_seq: int
    ) -> int:
        """Append to `subject` only if its last message is still `last_seq`; return the new
        sequence. Raises FencedError if another writer appended in between."""
        headers = {MSG_ID: msg_id, EXPECTED_LAST_SUBJECT_SEQ: str(last_seq)}
        for delay in _backoff():
            try:
                ack = await self.js.publish(subject, payload, headers=dict(headers))
                return int(ack.seq)
            except RETRYABLE:  # before APIError: ServiceUnavailableError is one
                await asyncio.sleep(delay)
            except jserr.APIError as err:
                if err.err_code != WRONG_LAST_SEQUENCE:
                    raise
                return await self._own_append_or_fenced(stream, subject, msg_id, last_seq)
        return await self._own_append_or_fenced(stream, subject, msg_id, last_seq)

    async def _own_append_or_fenced(
        self, stream: str, subject: str, msg_id: str, last_seq: int
    ) -> int:
        # Why: a retried append whose first try landed (ack lost) looks fenced; it is ours if
        # the subject's last message carries our id.
        last = await self.last_on_subject(stream, subject)
        if last is not None and last.msg_id == msg_id:
            return last.seq
        raise FencedError(subject, last_seq)

    async def publish(self, subject: str, payload: bytes, msg_id: str | None = None) -> int:
        headers = {MSG_ID: msg_id} if msg_id else None
        ack = await self._publish_retrying(subject, payload, headers)
        return int(ack.seq)

    async def _publish_retrying(self, subject: str, payload: bytes, headers: Any) -> Any:
        for delay in _backoff():
            try:
                return await self.js.publish(subject, payload, headers=headers)
            except RETRYABLE:
                await asyncio.sleep(delay)
        return await self.js.publish(subject, payload, headers=headers)

    async def core_publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        """Publish on core NATS (no stream listens) with the id as a header for subscribers
        that drop repeats; flushed so that a following ack of our input means it left."""
        await self.nc.publish(subject, payload, headers={MSG_ID: msg_id})
        await self.nc.flush(timeout=PUBLISH_TIMEOUT)

    async def stream_for_subject(self, subject: str) -> str | None:
        """The stream that captures `subject`, or None when none does."""
        try:
            return str(await self.js.find_stream_name_by_subject(subject))
        except jserr.NotFoundError:
            return None

    async def publish_all(self, outs: Sequence[Out]) -> None:
        """Publish every message and wait for every JetStream ack. Retries reuse the same
        Nats-Msg-Id, so a message stored once is never stored twice."""
        pending = list(outs)
        for delay in _backoff():
            if not pending:
                return
            pending = await self._publish_round(pending)
            if pending:
                await asyncio.sleep(delay)
        if pending:
            msg = f"{len(pending)} message(s) not acknowledged by JetStream (first: {pending[0].subject})"
            raise TimeoutError(msg)

    async def _publish_round(self, outs: Sequence[Out]) -> list[Out]:
        futures = [
            await self.js.publish_async(o.subject, o.payload, headers={MSG_ID: o.msg_id})
            for o in outs
        ]
        results = await asyncio.gather(
            *(asyncio.wait_for(f, PUBLISH_TIMEOUT) for f in futures), return_exceptions=True
        )
        failed = []
        for out, res in zip(outs, results, strict=True):
            if isinstance(res, RETRYABLE):
                failed.append(out)
            elif isinstance(res, BaseException):
                raise res
        return failed

    # --- reading ---------------------------------------------------------------------------

    async def msg_exists(self, stream: str, seq: int) -> bool:
        """Is message `seq` still in `stream` (not acked away from a work queue, not purged)?"""
        try:
            await self.js.get_msg(stream, seq, direct=True)
        except jserr.NotFoundError:
            return False
        return True

    async def last_on_subject(self, stream: str, subject: str) -> StoredMsg | None:
        try:
            m = await self.js.get_last_msg(stream, subject, direct=True)
        except jserr.NotFoundError:
            return None
        return StoredMsg(int(m.seq), m.subject, m.data or b"", (m.headers or {}).get(MSG_ID, ""))

    async def read_subject(
        self, stream: str, subject: str, upto: int, start: int = 1, batch: int = 32,
        complete: bool = False,
    ) -> AsyncIterator[StoredMsg]:
        """Every message on `subject` from seq `start` to `upto`, in order. With `complete`,
        ending before `upto` (a fetch timing out) raises instead of looking like the end."""
        if upto < start:
            return
        cfg = jsapi.ConsumerConfig(
            ack_policy=jsapi.AckPolicy.NONE, deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start, inactive_threshold=60.0, mem_storage=True,
        )
        sub = await self.js.pull_subscribe(subject, stream=stream, config=cfg)
        try:
            seq = 0
            while seq < upto:
                try:
                    msgs = await sub.fetch(batch=batch, timeout=5.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    if complete:
                        msg = f"reading {subject} stopped at seq {seq} of {upto}: retry"
                        raise TimeoutError(msg) from None
                    return  # nothing more on the subject (messages past `upto` were purged)
                for m in msgs:
                    seq = m.metadata.sequence.stream
                    yield StoredMsg(seq, m.subject, m.data, (m.headers or {}).get(MSG_ID, ""))
        finally:
            await self._delete_ephemeral(sub, stream)

    async def _delete_ephemeral(self, sub: Any, stream: str) -> None:
        with contextlib.suppress(jserr.NotFoundError, nats.errors.Error):
            info = await sub.consumer_info()
            await self.js.delete_consumer(stream, info.name)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def tail(self, stream: str, subject: str, start_seq: int = 1) -> AsyncIterator[StoredMsg]:
        """Follow `subject` forever from `start_seq` (an ordered, flow-controlled consumer)."""
        sub = await self.js.subscribe(
            subject, stream=stream, ordered_consumer=True,
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            config=jsapi.ConsumerConfig(opt_start_seq=start_seq),
        )
        try:
            while True:
                try:
                    m = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                yield StoredMsg(m.metadata.sequence.stream, m.subject, m.data,
                                (m.headers or {}).get(MSG_ID, ""))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # --- consumers -------------------------------------------------------------------------

    async def pull_consumer(
        self, stream: str, durable: str, subject: str, *, ack_wait: float = 30.0,
        max_ack_pending: int = 20_000,
    ) -> PullConsumer:
        cfg = jsapi.ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=ack_wait, max_ack_pending=max_ack_pending,
            deliver_policy=jsapi.DeliverPolicy.ALL, max_deliver=-1,
        )
        sub = await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=cfg)
        return PullConsumer(sub, stream, durable)

    async def restart_consumer(
        self, stream: str, durable: str, subject: str, start_seq: int, *, ack_wait: float = 60.0,
        max_ack_pending: int = 64,
    ) -> PullConsumer:
        """A fresh durable consumer that delivers `subject` from stream sequence `start_seq`.
        Why recreate instead of resuming: messages a crashed reader held unacked would come
        back only after `ack_wait`, and behind later ones; a reader that knows where it
        stopped (connector sinks) wants them at once and in order."""
        await self.delete_consumer(stream, durable)
        cfg = jsapi.ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=ack_wait, max_ack_pending=max_ack_pending, max_deliver=-1,
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq),
        )
        sub = await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=cfg)
        return PullConsumer(sub, stream, durable)

    async def consumer_ack_floor(self, stream: str, durable: str) -> int | None:
        """The stream sequence below which a durable consumer has every message acked, or
        None if the consumer does not exist."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except jserr.NotFoundError:
            return None
        return int(info.ack_floor.stream_seq) if info.ack_floor else 0

    async def delete_consumer(self, stream: str, durable: str) -> None:
        with contextlib.suppress(jserr.NotFoundError):
            await self.js.delete_consumer(stream, durable)

    async def delete_msg(self, stream: str, seq: int) -> None:
        with contextlib.suppress(jserr.NotFoundError):
            await self.js.delete_msg(stream, seq)

    async def purge_subject_below(self, stream: str, subject: str, seq: int) -> None:
        """Remove every message on `subject` with a sequence below `seq`."""
        await self.js.purge_stream(stream, subject=subject, seq=seq)

    async def consumer_lag(self, stream: str, durable: str) -> tuple[int, int] | None:
        """(num_pending, num_ack_pending) of a durable consumer, or None if it does not exist."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except jserr.NotFoundError:
            return None
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    # --- key/value and object store ----------------------------------------------------------

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        kv = await self._kv(bucket)
        return int(await kv.put(key, value))

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        kv = await self._kv(bucket, create=False)
        if kv is None:
            return None
        try:
            entry = await kv.get(key)
        except (jserr.KeyNotFoundError, jserr.KeyDeletedError):
            return None
        return bytes(entry.value) if entry.value is not None else None

    async def kv_keys(self, bucket: str) -> list[str]:
        kv = await self._kv(bucket, create=False)
        if kv is None:
            return []
        try:
            return sorted(await kv.keys())
        except jserr.NoKeysError:
            return []

    async def _kv(self, bucket: str, *, create: bool = True, ttl: float | None = None) -> Any:
        """The bucket, created (with `ttl`) if missing and `create`; None if missing.
        Why readers never create: a bucket made by a reader would lack its writer's TTL."""
        kv = self._buckets.get(bucket)
        if kv is not None:
            return kv
        try:
            kv = await self.js.key_value(bucket)
        except jserr.BucketNotFoundError:
            if not create:
                return None
            cfg = jsapi.KeyValueConfig(bucket=bucket, history=1 if ttl else 16, ttl=ttl,
                                       replicas=replicas())
            kv = await self.js.create_key_value(cfg)
        self._buckets[bucket] = kv
        return kv

    async def kv_bucket(self, bucket: str, ttl: float | None = None) -> None:
        """Make sure `bucket` exists; with `ttl`, entries vanish `ttl` seconds after their
        last write (membership and leases that must lapse when their writer dies)."""
        await self._kv(bucket, ttl=ttl)

    async def kv_entry(self, bucket: str, key: str) -> KvEntry | None:
        kv = await self._kv(bucket, create=False)
        if kv is None:
            return None
        try:
            e = await kv.get(key)
        except (jserr.KeyNotFoundError, jserr.KeyDeletedError):
            return None
        return KvEntry(key, bytes(e.value or b""), int(e.revision))

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int | None:
        """Write `key` only if it does not exist; its revision, or None if it exists."""
        kv = await self._kv(bucket)
        try:
            return int(await kv.create(key, value))
        except jserr.KeyWrongLastSequenceError:
            return None

    async def kv_update(self, bucket: str, key: str, value: bytes, last: int) -> int | None:
        """Compare-and-swap: write only if `key` is still at revision `last`; else None."""
        kv = await self._kv(bucket)
        try:
            return int(await kv.update(key, value, last=last))
        except jserr.KeyWrongLastSequenceError:
            return None

    async def kv_delete(self, bucket: str, key: str, last: int | None = None) -> bool:
        """Delete `key` (only at revision `last`, if given); False if it had moved on."""
        kv = await self._kv(bucket)
        try:
            await kv.delete(key, last=last)
        except jserr.KeyWrongLastSequenceError:
            return False
        except jserr.BadRequestError as err:
            # nats-py's delete (unlike update) does not translate a failed `last` check.
            if err.err_code != WRONG_LAST_SEQUENCE:
                raise
            return False
        return True

    async def obj_put(self, bucket: str, name: str, data: bytes) -> None:
        store = await self._obj(bucket)
        await store.put(name, data)

    async def obj_get(self, bucket: str, name: str) -> bytes | None:
        store = await self._obj(bucket)
        try:
            res = await store.get(name)
        except jserr.ObjectNotFoundError:
            return None
        return bytes(res.data) if res.data is not None else None

    async def _obj(self, bucket: str) -> Any:
        try:
            return await self.js.object_store(bucket)
        except (jserr.BucketNotFoundError, jserr.NotFoundError):
            cfg = jsapi.ObjectStoreConfig(bucket=bucket, replicas=replicas())
            return await self.js.create_object_store(bucket=bucket, config=cfg)

