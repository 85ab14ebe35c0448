"""The one module that talks to NATS (nats-py): `Nats` implements the Protocols of
wallaroo.nats.protocol on a real server. Everything else uses these typed calls.

Why a wrapper: callers need a bounded wait with a same-id retry, an empty list from a fetch
that found nothing, and a FencedError for a fenced append, where nats-py has unbounded
futures, exceptions and a generic APIError. JetStream publishes and pulls go over nats-py's
connection (reconnects, auth and TLS stay its) but not through its JetStream helpers, which
cost a task, a timer or a NUID per message on the loop every partition of a runner shares:
see _JsAcks and PullConsumer (bench/commit_cost.py measures a commit's share)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import hmac
import itertools
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from wallaroo.core.aio import doubling
from wallaroo.core.errors import (
    CredentialsError,
    FencedError,
    NatsUnreachableError,
    TlsError,
    WallarooError,
)
from wallaroo.nats.protocol import (
    CREDS_ENV,
    DUPLICATE_WINDOW,
    MSG_ID,
    TLS_CA_ENV,
    InMsg,
    KvEntry,
    Out,
    StoredMsg,
)


@contextlib.contextmanager
def _without_aiohttp() -> Iterator[None]:
    """Imports in this block see no aiohttp. Why: nats-py imports it for its websocket
    transport only, and that import was 0.13 s of every CLI command's and every runner's
    start; wallaroo speaks nats:// and tls:// only. A None in sys.modules makes `import
    aiohttp` fail, which nats-py takes for "no websockets"; the entry goes away after, so
    the S3 client and the HTTP sinks import aiohttp as usual."""
    if "aiohttp" in sys.modules:  # already imported (or already hidden): nothing to save
        yield
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("aiohttp") is None:
            del sys.modules["aiohttp"]


with _without_aiohttp():
    import nats  # noqa: TID251 - this module is the owner of the nats import
    import nats.errors  # noqa: TID251
    import nats.js.api as jsapi  # noqa: TID251
    import nats.js.errors as jserr  # noqa: TID251

log = logging.getLogger("wallaroo.nats")
KV_OPERATION = "KV-Operation"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071
# Statuses: a publish no stream captured, or a pull of a consumer without a leader; a pull
# that ended short of its batch (none left: 404, expired: 408, cut by the server: 409); an
# idle heartbeat.
NO_RESPONDERS = "503"
PULL_ENDED = ("404", "408", "409")
HEARTBEAT = "100"
PULL_GRACE = 1.0  # seconds past a pull's expiry before its end is taken as lost
PUBLISH_TIMEOUT = 5.0
# Why a time budget, not a count: a stream without a leader answers at once (no responders)
# for the whole election, which takes nats-server 4-9 s; a fixed count gives up first.
PUBLISH_PATIENCE = 30.0
# Why longer for consumers: creating or deleting one goes through the meta leader, and after
# losing the node that led it the cluster answers no such request until a new one is elected
# and has caught up (seen: 5-20 s). Giving up and restarting only queues more such requests.
META_PATIENCE = 60.0
# Changelog reads: messages per batched direct get, and a cap on a batch's bytes.
DIRECT_BATCH = 256
DIRECT_MAX_BYTES = 8 * 1024 * 1024
T = TypeVar("T")


def replicas() -> int:
    """JetStream replicas for every stream and bucket the toolkit creates: 1 on one server,
    3 on a cluster (`WALLAROO_REPLICAS=3`), so losing a node loses nothing."""
    return int(os.environ.get("WALLAROO_REPLICAS", "1"))


RETRYABLE = (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
             jserr.NoStreamResponseError, jserr.ServiceUnavailableError)


def unavailable(err: BaseException) -> bool:
    """Is `err` NATS being unreachable or leaderless (rather than a bad request or a bug)?"""
    if isinstance(err, (*RETRYABLE, OSError)):
        return True
    return isinstance(err, nats.errors.Error) and not isinstance(err, jserr.APIError)


def nats_failure(err: BaseException) -> bool:
    """Is `err` NATS failing a request (a timeout, no responders, a refused JetStream call)
    rather than a bug: what a command reports as one line, not a traceback."""
    return isinstance(err, (*RETRYABLE, nats.errors.Error))


def _backoff(patience: float = PUBLISH_PATIENCE) -> Iterator[float]:
    """Delays between tries: growing to 1 s, until `patience` seconds have passed."""
    deadline = time.monotonic() + patience
    for delay in doubling(0.05, 1.0):
        if time.monotonic() >= deadline:
            return
        yield delay


async def _patiently(call: Callable[[], Awaitable[T]], patience: float = PUBLISH_PATIENCE) -> T:
    """`call()`, tried again on a timeout or a missing leader until `patience` runs out; the
    last try's error propagates. Only for calls that are safe to repeat."""
    for delay in _backoff(patience):
        try:
            return await call()
        except RETRYABLE:  # before APIError: ServiceUnavailableError is one
            await asyncio.sleep(delay)
    return await call()


class TooManyResultsError(WallarooError):
    """A direct get would answer with more messages than the server sends for one request."""


def _tag_key(seed_file: str | None) -> bytes | None:
    """The key of `Nats.id_tag`: a hash of the nkey seed (never the seed itself)."""
    if seed_file is None:
        return None
    seed = Path(seed_file).read_bytes().strip()
    return hashlib.sha256(b"wallaroo message id tags\0" + seed).digest()


def _pub_ack(msg: Any) -> tuple[int, bool]:
    """(stream seq, duplicate) from a JetStream publish ack, or the error it carries, as
    nats-py's own classes (so RETRYABLE and WRONG_LAST_SEQUENCE mean what they did)."""
    if msg.headers and msg.headers.get(jsapi.Header.STATUS.value) == NO_RESPONDERS:
        raise nats.errors.NoRespondersError
    resp = json.loads(msg.data)
    if "error" in resp:
        raise jserr.APIError.from_error(resp["error"])
    return int(resp["seq"]), bool(resp.get("duplicate"))


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


class _JsAcks:
    """JetStream publishes whose acks come back on one wildcard inbox of the connection.
    Why not nats-py's js.publish and publish_async: per message they take a NUID, a future
    with its own wait_for (a timer and a second future) or a semaphore, and a PubAck
    dataclass; the commit loop makes 3 to 10 such publishes per commit on the event loop
    every partition of a runner shares (bench/commit_cost.py). Here a publish is a counter
    token, one future and, on its ack, one json.loads. The inbox subscription is
    nats-py's, so it is made again after a reconnect; an ack lost meanwhile is a timeout
    the caller retries with the same message id, as before."""

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._tokens = itertools.count()
        self._inbox: asyncio.Task[str] | None = None

    async def send(self, subject: str, payload: bytes, headers: dict[str, str] | None
                   ) -> tuple[str, asyncio.Future[Any]]:
        """Publish; (its token, the future of its ack message). Forget the token when the
        ack is not awaited to the end (a timeout, a cancel)."""
        if self._inbox is None or _failed(self._inbox):  # one, however many publish at once
            self._inbox = asyncio.ensure_future(self._subscribe())
        prefix = await self._inbox
        token = str(next(self._tokens))
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[token] = ack
        try:
            await self._nc.publish(subject, payload, reply=prefix + token, headers=headers)
        except BaseException:
            del self._waiting[token]
            raise
        return token, ack

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def forget(self, token: str) -> None:
        ack = self._waiting.pop(token, None)
        if ack is not None:
            ack.cancel()

    async def _subscribe(self) -> str:
        prefix = f"{self._nc.new_inbox()}."
        await self._nc.subscribe(f"{prefix}*", cb=self._on_ack)
        return prefix

    async def _on_ack(self, msg: Any) -> None:
        ack = self._waiting.pop(msg.subject.rpartition(".")[2], None)
        if ack is not None and not ack.done():
            ack.set_result(msg)


def _direct_more(status: str, headers: dict[Any, str], stream: str) -> bool:
    """Whether a batched direct get that ended with `status` left matching messages."""
    if status == "204":  # end of batch
        return int(headers.get("Nats-Num-Pending") or 0) > 0
    if status == "404":  # no message at or after the asked seq
        return False
    if status == "503":  # no replica answers yet: try again
        msg = f"stream {stream}: direct get answered {status}"
        raise TimeoutError(msg)
    described = {str(getattr(k, "value", k)): v for k, v in headers.items()}
    msg = f"stream {stream}: direct get failed with {status} {described.get('Description', '')}"
    raise TooManyResultsError(msg) if status == "413" else WallarooError(msg)


# Why callbacks: nats-py's defaults print full tracebacks to stderr on every connection error.
async def _unless(failed: asyncio.Event, connecting: Awaitable[T]) -> T | None:
    """`connecting`'s result, or None once `failed` is set first. A certificate that does not
    verify will not verify on the next attempt either, and nats-py's retry after a failed TLS
    handshake can hang: the first such failure ends the connect (runners included)."""
    task = asyncio.ensure_future(connecting)
    waiter = asyncio.create_task(failed.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
    if not failed.is_set() or (task.done() and not task.cancelled() and task.exception() is None):
        return task.result()
    await asyncio.wait([task], timeout=5)
    if task.done() and not task.cancelled():
        task.exception()  # how it ended is no news: TLS failed, which the caller says
    return None


def _tls_context(url: str, ca: str | None) -> ssl.SSLContext | None:
    """For a tls:// URL: a context that verifies the server against `ca` (else the system's
    CAs) and checks its host name. None for nats://, whose server must not ask for TLS."""
    if not url.startswith("tls://"):
        return None
    if ca is not None and not Path(ca).is_file():
        raise TlsError(url, ca, "the file does not exist")
    try:
        return ssl.create_default_context(cafile=ca)
    except ssl.SSLError as err:
        raise TlsError(url, ca, f"not a PEM certificate: {_ssl_reason(err)}") from err


def _ssl_reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {err.verify_message}"
    return str(getattr(err, "reason", None) or err)


async def _log_error(err: Exception) -> None:
    log.warning("nats: %s: %s", type(err).__name__, err)


async def _log_disconnect() -> None:
    log.info("nats: disconnected")  # also on a deliberate close: not a warning


async def _log_reconnect() -> None:
    log.warning("nats: reconnected")


class PullConsumer:
    """A durable pull consumer read through an inbox subscription of its own, one pull
    request per fetch. Why not nats-py's fetch: it waits for each message with a task and
    a wait_for of its own, and a batch that is not full needs two pulls; the commit loop
    fetches once per commit on the event loop every partition of a runner shares."""

    def __init__(self, nc: Any, stream: str, name: str, inbox: str) -> None:
        self._nc, self.stream, self.name, self._inbox = nc, stream, name, inbox
        self._next = f"{jsapi.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{name}"
        self._got: collections.deque[Any] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._sub: Any = None
        self._unavailable_since: float | None = None

    @classmethod
    async def open(cls, nc: Any, stream: str, name: str) -> PullConsumer:
        consumer = cls(nc, stream, name, nc.new_inbox())
        consumer._sub = await nc.subscribe(consumer._inbox, cb=consumer._deliver)
        return consumer

    async def _deliver(self, msg: Any) -> None:
        self._got.append(msg)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def fetch(self, batch: int, timeout: float) -> list[InMsg]:
        """Up to `batch` messages, waiting at most `timeout` for the first. One pull: with
        no_wait and an expiry the server waits for the first message, sends what else is
        there (up to `batch`) at once and ends the pull with a 404, or ends it with a 408
        when nothing came. Delivered messages are read in order whichever pull brought
        them (a pull given up on here may still deliver: the next fetch returns it)."""
        request = json.dumps({"batch": batch, "expires": int(timeout * 1e9), "no_wait": True})
        await self._nc.publish(self._next, request.encode(), reply=self._inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout + PULL_GRACE
        got: list[InMsg] = []
        while len(got) < batch:
            if not self._got:
                if not await self._arrival(deadline - loop.time()):
                    break
                continue
            msg = self._got.popleft()
            status = msg.headers.get(jsapi.Header.STATUS.value) if msg.headers else None
            if status is None:
                got.append(_in_msg(msg))
            elif status == NO_RESPONDERS:  # the consumer has no leader
                return got or await self._leaderless(timeout)
            elif status in PULL_ENDED:  # (an earlier pull's late end ends this one: harmless)
                break
            elif status != HEARTBEAT:
                raise jserr.APIError.from_msg(msg)
        self._unavailable_since = None  # the leader answered
        return got

    async def _arrival(self, seconds: float) -> bool:
        """Wait up to `seconds` for a delivery; whether one came."""
        if seconds <= 0:
            return False
        self._wake = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):
                await self._wake
        except TimeoutError:
            return False
        finally:
            self._wake = None
        return True

    async def _leaderless(self, timeout: float) -> list[InMsg]:
        """Nothing to read while the consumer has no leader (its node was lost and the rest
        elect another, in seconds): rebuilding it would need the meta leader, which may be
        electing too. Only a consumer leaderless for META_PATIENCE raises (to rebuild it)."""
        now = time.monotonic()
        self._unavailable_since = self._unavailable_since or now
        if now - self._unavailable_since > META_PATIENCE:
            msg = f"consumer {self.name} of stream {self.stream} has had no leader for {META_PATIENCE:.0f}s"
            raise TimeoutError(msg)
        await asyncio.sleep(min(timeout, 0.25))
        return []

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
            await self._sub.unsubscribe()


def _in_msg(m: Any) -> InMsg:
    md = m.metadata
    headers = m.headers or {}
    seq = md.sequence
    stamp = md.timestamp  # a datetime in nats-py
    return InMsg(m.data, headers.get(MSG_ID, ""), seq.stream, seq.consumer, md.num_delivered,
                 md.num_pending or 0, m.ack, m.in_progress,
                 stamp.timestamp() if stamp is not None else 0.0, m.nak, m.subject)


class Nats:
    """A connection with JetStream, KV and object store helpers."""

    def __init__(self, nc: Any, tag_key: bytes | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        self._acks = _JsAcks(nc)
        self._buckets: dict[str, Any] = {}
        self._tag_key = tag_key

    def id_tag(self, text: str) -> str:
        """A tag for the message id `text` that only holders of this connection's credentials
        (its role: every runner, or every deployer) can make, the same every time: an HMAC
        under a key derived from the nkey seed. Why: JetStream drops a message whose id it has
        seen in the whole stream, clients may publish to an app's source subjects with any
        id, and some of our ids there are predictable (a file source's batch offsets, a dead
        letter's replay): tagged, a client cannot claim one first and have ours dropped.
        Empty without credentials (an unauthenticated server: anyone may do anything)."""
        if self._tag_key is None:
            return ""
        return hmac.new(self._tag_key, text.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).hexdigest()[:20]

    @classmethod
    async def connect(cls, url: str, name: str = "wallaroo", *, persistent: bool = True,
                      creds: str | Path | None = None, tls_ca: str | Path | None = None) -> Nats:
        """`persistent` (runners): reconnect forever. Otherwise (CLI commands) fail fast with
        an error that says where NATS was looked for. `creds`: an nkey seed file (default
        $WALLAROO_CREDS); the server refuses connections without one it knows. `tls_ca`: the
        CA a tls:// server's certificate must chain to (default $WALLAROO_TLS_CA, else the
        system's CAs); the host name is checked too."""
        seed = str(creds) if creds else os.environ.get(CREDS_ENV) or None
        if seed is not None and not Path(seed).is_file():
            raise CredentialsError(url, seed, "the file does not exist")
        ca = str(tls_ca) if tls_ca else os.environ.get(TLS_CA_ENV) or None
        tls = _tls_context(url, ca)
        refused: list[str] = []
        untrusted: list[str] = []
        tls_failed = asyncio.Event()

        async def on_error(err: Exception) -> None:
            if "authorization" in str(err).lower():
                refused.append(str(err))  # said once, by the CredentialsError below
                return
            if isinstance(err, ssl.SSLError) and not tls_failed.is_set():
                untrusted.append(_ssl_reason(err))  # said once, by the TlsError below
                tls_failed.set()
                return
            await _log_error(err)

        try:
            nc = await _unless(tls_failed, nats.connect(
                servers=[url], name=name, max_reconnect_attempts=-1 if persistent else 2,
                reconnect_time_wait=0.2, connect_timeout=2, allow_reconnect=True,
                error_cb=on_error, disconnected_cb=_log_disconnect,
                reconnected_cb=_log_reconnect, nkeys_seed=seed, tls=tls,
            ))
        except (TimeoutError, nats.errors.Error, OSError) as err:
            if refused or "authorization" in str(err).lower():
                raise CredentialsError(url, seed, "authorization violation") from err
            raise NatsUnreachableError(url) from err
        if nc is None:
            raise TlsError(url, ca if tls else None, untrusted[-1])
        return cls(nc, _tag_key(seed))

    @property
    def unacked(self) -> int:
        """Publishes of this connection waiting for their JetStream ack."""
        return self._acks.waiting

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (its max_payload)."""
        return int(self.nc.max_payload)

    async def close(self) -> None:
        """Drain (flush what is in flight) when connected; otherwise just close: draining a
        connection that is reconnecting raises, and a runner stopped while NATS is away must
        still exit cleanly."""
        if self.nc.is_connected:
            with contextlib.suppress(nats.errors.ConnectionClosedError,
                                     nats.errors.ConnectionReconnectingError):
                await self.nc.drain()
                return
        if not self.nc.is_closed:
            # nats-py flushes a socket that may be dead already: its reset is no news here
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await self.nc.close()

    # --- streams -------------------------------------------------------------------------

    async def ensure_stream(
        self, name: str, subjects: list[str], *, work_queue: bool = False,
        dedup_window: float = DUPLICATE_WINDOW, max_msg_size: int = -1,
        max_age: float | None = None, max_bytes: int | None = None,
    ) -> None:
        """Create the stream, or bring an existing one's age and size limits to these and add
        the subjects it lacks (a redeploy may change them, a newer version add subjects; the
        rest of a stream's config is fixed at creation)."""
        cfg = jsapi.StreamConfig(
            name=name, subjects=subjects, storage=jsapi.StorageType.FILE,
            retention=jsapi.RetentionPolicy.WORK_QUEUE if work_queue else jsapi.RetentionPolicy.LIMITS,
            duplicate_window=dedup_window, max_msg_size=max_msg_size, allow_direct=True,
            num_replicas=replicas(), max_age=max_age or 0, max_bytes=max_bytes or -1,
        )
        try:
            info = await self.js.stream_info(name)
        except jserr.NotFoundError:
            await self.js.add_stream(cfg)
            return
        now = info.config
        # Subjects are only ever added: a stream made by an older version lacks the newer ones.
        known = list(now.subjects or [])
        wanted = known + [s for s in subjects if s not in known]
        if ((now.max_age or 0) != cfg.max_age or (now.max_bytes or -1) != cfg.max_bytes
                or wanted != known):
            await self.js.update_stream(replace(now, max_age=cfg.max_age, max_bytes=cfg.max_bytes,
                                                subjects=wanted))

    async def stream_last_seq(self, stream: str) -> int:
        info = await _patiently(lambda: self.js.stream_info(stream))
        return int(info.state.last_seq)

    async def stream_first_seq(self, stream: str) -> int:
        """The oldest sequence still stored (retention limits drop the ones before)."""
        info = await _patiently(lambda: self.js.stream_info(stream))
        return int(info.state.first_seq)

    async def subject_count(self, stream: str, subject: str) -> int:
        """How many messages of `stream` are on `subject` (wildcards allowed) now."""
        info = await _patiently(lambda: self.js.stream_info(stream, subjects_filter=subject))
        return sum((info.state.subjects or {}).values())

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
                return await self._publish_acked(subject, payload, headers)
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

    async def _publish_acked(self, subject: str, payload: bytes, headers: dict[str, str] | None
                             ) -> int:
        """One publish and its ack within PUBLISH_TIMEOUT: its stream seq."""
        token, ack = await self._acks.send(subject, payload, headers)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                return _pub_ack(await ack)[0]
        finally:
            self._acks.forget(token)  # (answered: a no-op)

    async def publish(self, subject: str, payload: bytes, msg_id: str | None = None) -> int:
        headers = {MSG_ID: msg_id} if msg_id else None
        return await _patiently(lambda: self._publish_acked(subject, payload, headers))

    async def core_publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        """Publish on core NATS (no stream listens) with the id as a header for subscribers
        that drop repeats; flushed so that a following ack of our input means it left."""
        await self.nc.publish(subject, payload, headers={MSG_ID: msg_id})
        # Shielded: nats-py's flush cancelled while it waits for its PONG leaves a cancelled
        # future behind, and the PONG then raises in the connection's read loop, which stops
        # reading for good (a sink stopped mid-publish broke the runner's connection).
        await asyncio.shield(self.nc.flush(timeout=PUBLISH_TIMEOUT))

    async def announce(self, subject: str, payload: bytes) -> None:
        """Publish on core NATS, unflushed: for notices whose loss a listener recovers from
        (a result announced after its durable write). Sent before anything this connection
        sends later, e.g. the ack of the message that caused it."""
        await self.nc.publish(subject, payload)

    async def listen(self, subject: str, on_message: Callable[[bytes], None]
                     ) -> Callable[[], Awaitable[None]]:
        """Call `on_message(data)` for every core NATS message on `subject` until the returned
        function is awaited. The SUB reaches the server before any later request of this
        connection, so a read made after listen() cannot miss a notice sent after it."""

        async def deliver(m: Any) -> None:
            on_message(m.data)

        return await self._until_stopped(subject, deliver)

    async def watch_writes(self, bucket: str, on_write: Callable[[str, bytes | None], None]
                           ) -> Callable[[], Awaitable[None]]:
        """Call `on_write(key, value)` (None: deleted) for every write to KV `bucket` as it is
        made (a core subscription on the bucket's subjects: no consumer, nothing replayed),
        until the returned function is awaited. Entries that lapse by age make no write."""
        prefix = f"$KV.{bucket}."

        async def deliver(m: Any) -> None:
            deleted = (m.headers or {}).get(KV_OPERATION, "") in ("DEL", "PURGE")
            on_write(m.subject[len(prefix):], None if deleted else m.data)

        return await self._until_stopped(f"{prefix}>", deliver)

    async def _until_stopped(self, subject: str, deliver: Callable[[Any], Awaitable[None]]
                             ) -> Callable[[], Awaitable[None]]:
        """A core subscription calling `deliver` with each message, and what ends it."""
        sub = await self.nc.subscribe(subject, cb=deliver)

        async def stop() -> None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

        return stop

    async def stream_for_subject(self, subject: str) -> str | None:
        """The stream that captures `subject`, or None when none does."""
        try:
            return str(await self.js.find_stream_name_by_subject(subject))
        except jserr.NotFoundError:
            return None

    async def publish_all(self, outs: Sequence[Out]) -> set[str]:
        """Publish every message and wait for every JetStream ack; the ids JetStream had
        already (duplicates it dropped). Retries reuse the same Nats-Msg-Id, so a message
        stored once is never stored twice (a retried one may then count as a duplicate)."""
        pending, dropped = list(outs), set[str]()
        for delay in _backoff():
            if not pending:
                return dropped
            pending = await self._publish_round(pending, dropped)
            if pending:
                await asyncio.sleep(delay)
        if pending:
            msg = f"{len(pending)} message(s) not acknowledged by JetStream (first: {pending[0].subject})"
            raise TimeoutError(msg)
        return dropped

    async def _publish_round(self, outs: Sequence[Out], dropped: set[str]) -> list[Out]:
        if not outs:
            return []
        sent: list[tuple[str, asyncio.Future[Any]]] = []
        try:
            for o in outs:
                sent.append(await self._acks.send(o.subject, o.payload, {MSG_ID: o.msg_id}))
            # Why one wait for the round, not a wait_for per message: that made a task and a
            # timer per output on the event loop every partition of the runner shares.
            _, late = await asyncio.wait([ack for _, ack in sent], timeout=PUBLISH_TIMEOUT)
        except BaseException:
            for token, _ in sent:  # the round was cancelled (a worker stopped)
                self._acks.forget(token)
            raise
        failed = []
        for out, (token, ack) in zip(outs, sent, strict=True):
            if ack in late:  # no ack within PUBLISH_TIMEOUT: again, same id
                self._acks.forget(token)
                failed.append(out)
                continue
            try:
                _, duplicate = _pub_ack(ack.result())
            except RETRYABLE:
                failed.append(out)
                continue
            if duplicate:
                dropped.add(out.msg_id)
        return failed

    # --- reading ---------------------------------------------------------------------------

    # Reads are tried again while the stream has no leader (a replicated stream electing one
    # after a node loss answers "no responders" for a moment), as every other read here.

    async def msg_exists(self, stream: str, seq: int) -> bool:
        """Is message `seq` still in `stream` (not acked away from a work queue, not purged)?"""
        try:
            await _patiently(lambda: self.js.get_msg(stream, seq, direct=True))
        except jserr.NotFoundError:
            return False
        return True

    async def last_on_subject(self, stream: str, subject: str) -> StoredMsg | None:
        try:
            m = await _patiently(lambda: self.js.get_last_msg(stream, subject, direct=True))
        except jserr.NotFoundError:
            return None
        return StoredMsg(int(m.seq), m.subject, m.data or b"", (m.headers or {}).get(MSG_ID, ""))

    async def read_subject(
        self, stream: str, subject: str, upto: int, start: int = 1, complete: bool = False,
    ) -> AsyncIterator[StoredMsg]:
        """Every message on `subject` (wildcards allowed) from seq `start` to `upto`, in order.
        With `complete`, the subject ending before `upto` raises TimeoutError (retry) instead
        of looking like the end: a replica that has not caught up may answer.
        Why batched direct gets, not a consumer: any replica answers them, without the meta
        leader a consumer needs, so a restore does not wait out a meta election."""
        seq = start - 1
        while seq < upto:
            ask = functools.partial(self._direct, stream, {
                "seq": seq + 1, "next_by_subj": subject, "batch": min(DIRECT_BATCH, upto - seq),
                "max_bytes": DIRECT_MAX_BYTES})
            msgs, more = await _patiently(ask)
            for m in msgs:
                if m.seq > upto:
                    return
                yield m
                seq = m.seq
            if not more:
                break
        if complete and seq < upto:
            msg = f"reading {subject} stopped at seq {seq} of {upto}: retry"
            raise TimeoutError(msg)

    async def _direct(self, stream: str, request: dict[str, Any]) -> tuple[list[StoredMsg], bool]:
        """The messages a batched direct get answers `request` with, and whether more match."""
        inbox = self.nc.new_inbox()
        replies: asyncio.Queue[Any] = asyncio.Queue()
        sub = await self.nc.subscribe(inbox, cb=replies.put)
        try:
            await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            msgs: list[StoredMsg] = []
            while True:
                m = await asyncio.wait_for(replies.get(), PUBLISH_TIMEOUT)
                headers = m.headers or {}
                status = headers.get("Status")
                if status is not None:
                    return msgs, _direct_more(status, headers, stream)
                msgs.append(StoredMsg(int(headers["Nats-Sequence"]), headers["Nats-Subject"], m.data,
                                      headers.get(MSG_ID, ""), headers.get(KV_OPERATION, "")))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def tail(self, stream: str, subject: str, start_seq: int = 1) -> AsyncIterator[StoredMsg]:
        """Follow `subject` forever from `start_seq` (an ordered, flow-controlled consumer)."""
        sub = await _patiently(lambda: self.js.subscribe(
            subject, stream=stream, ordered_consumer=True,
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            config=jsapi.ConsumerConfig(opt_start_seq=start_seq),
        ), META_PATIENCE)  # its consumer needs the meta leader, which a node loss takes away
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

    async def fresh_consumer(
        self, stream: str, durable: str, subject: str | Sequence[str], start_seq: int | None = None,
        *, ack_wait: float = 30.0, max_ack_pending: int = 20_000,
    ) -> PullConsumer:
        """A new durable pull consumer delivering `subject` (or several subjects: one stream
        order, nats-server 2.10+) in order, from stream seq
        `start_seq` or (None: what a work queue demands) from its oldest message. Why replace
        rather than resume: messages a crashed reader held unacked would come back only after
        `ack_wait`, and behind later ones; a reader that knows where it stopped wants them at
        once and in order. Each step waits out a meta election; a create retried after its
        first try landed gets the same, still unread, consumer."""
        await _patiently(lambda: self.delete_consumer(stream, durable), META_PATIENCE)
        subjects = [subject] if isinstance(subject, str) else list(subject)
        cfg = jsapi.ConsumerConfig(
            durable_name=durable, ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=ack_wait, max_ack_pending=max_ack_pending, max_deliver=-1,
            deliver_policy=jsapi.DeliverPolicy.ALL,
        )
        if len(subjects) == 1:
            cfg.filter_subject = subjects[0]
        else:
            cfg.filter_subjects = subjects
        if start_seq is not None:
            cfg.deliver_policy = jsapi.DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = max(1, start_seq)
        await _patiently(lambda: self.js.add_consumer(stream, config=cfg), META_PATIENCE)
        return await PullConsumer.open(self.nc, stream, durable)

    async def shared_consumer(
        self, stream: str, durable: str, subject: str, *, ack_wait: float, max_ack_pending: int,
    ) -> PullConsumer:
        """Bind to a durable pull consumer that several processes read together (each message
        goes to one of them), creating it if missing. Unlike fresh_consumer it is never
        deleted: others may hold messages from it."""
        cfg = jsapi.ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=ack_wait, max_ack_pending=max_ack_pending, max_deliver=-1,
            deliver_policy=jsapi.DeliverPolicy.ALL,
        )
        # Creating a durable that exists with the same config is a no-op for the server.
        await _patiently(lambda: self.js.add_consumer(stream, config=cfg), META_PATIENCE)
        return await PullConsumer.open(self.nc, stream, durable)

    async def consumer_ack_floor(self, stream: str, durable: str) -> int | None:
        """The stream sequence below which a durable consumer has every message acked, or
        None if the consumer does not exist."""
        try:
            info = await _patiently(lambda: self.js.consumer_info(stream, durable))
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
        """Remove every message on `subject` with a sequence below `seq` (repeatable)."""
        await _patiently(lambda: self.js.purge_stream(stream, subject=subject, seq=seq))

    async def purge_subject(self, stream: str, subject: str) -> None:
        """Remove every message on `subject` (repeatable; a missing stream is empty already)."""
        with contextlib.suppress(jserr.NotFoundError):
            await _patiently(lambda: self.js.purge_stream(stream, subject=subject))

    async def consumer_lag(self, stream: str, durable: str) -> tuple[int, int] | None:
        """(num_pending, num_ack_pending) of a durable consumer, or None if it does not exist."""
        try:
            info = await _patiently(lambda: self.js.consumer_info(stream, durable))
        except jserr.NotFoundError:
            return None
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    # --- key/value and object store ----------------------------------------------------------

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Write `value` under `key`, tried again while the bucket's stream has no leader yet
        (a clustered bucket just made, or after a node loss: "no responders"). A put is safe
        to repeat: the key then holds the same value."""
        kv = await self._kv(bucket)
        return int(await _patiently(lambda: kv.put(key, value)))

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        entry = await self.kv_entry(bucket, key)
        return None if entry is None else entry.value

    async def kv_keys(self, bucket: str) -> list[str]:
        kv = await self._kv(bucket, create=False)
        if kv is None:
            return []
        if getattr(kv, "_direct", False):  # nats-py's KeyValue keeps the bucket's allow_direct
            try:
                return await self._kv_keys_direct(bucket)
            except TooManyResultsError:  # over 1024 keys: read every message of the bucket
                return await self._kv_keys_scan(bucket)
        try:
            return sorted(await kv.keys())
        except jserr.NoKeysError:
            return []

    async def _kv_keys_direct(self, bucket: str) -> list[str]:
        """The bucket's live keys from one direct get of every key's last message. Why not
        nats-py's keys(): that is a watch, whose consumer needs the meta leader, and after a
        node loss a control loop must not wait out a meta election to list its members."""
        prefix = f"$KV.{bucket}."
        msgs, more = await self._direct(f"KV_{bucket}", {"multi_last": [f"{prefix}>"]})
        if more:  # the server ended the answer early: a watch lists them all
            msg = f"KV bucket {bucket}: more keys than one direct get answers"
            raise TooManyResultsError(msg)
        return sorted(m.subject[len(prefix):] for m in msgs if not m.deleted)

    async def _kv_keys_scan(self, bucket: str) -> list[str]:
        """The bucket's live keys from its messages, oldest to newest (batched direct gets:
        no consumer either). Why not nats-py's keys() (a watch) here: it returned no key at
        all now and then (CI, 1,100 keys): its watcher decides it is done when the consumer
        says nothing is pending, which it can say before the pushed messages are read."""
        prefix = f"$KV.{bucket}."
        live: dict[str, bool] = {}
        async for m in self.read_subject(f"KV_{bucket}", f"{prefix}>",
                                         await self.stream_last_seq(f"KV_{bucket}")):
            live[m.subject[len(prefix):]] = not m.deleted
        return sorted(key for key, alive in live.items() if alive)

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
            # direct: any replica answers reads, without a consumer (see kv_keys)
            cfg = jsapi.KeyValueConfig(bucket=bucket, history=1 if ttl else 16, ttl=ttl,
                                       replicas=replicas(), direct=True)
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

    async def kv_history(self, bucket: str, key: str) -> list[KvEntry]:
        """Every value `key` still holds in `bucket`'s history, oldest first (delete markers
        left out); [] for a missing bucket. Batched direct gets, like read_subject: no
        consumer, so no meta leader needed."""
        if await self._kv(bucket, create=False) is None:
            return []
        stream = f"KV_{bucket}"
        last = await self.stream_last_seq(stream)
        return [KvEntry(key, m.data, m.seq)
                async for m in self.read_subject(stream, f"$KV.{bucket}.{key}", last)
                if not m.deleted]

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

    async def kv_purge(self, bucket: str, key: str) -> None:
        """Remove `key` with its history, leaving no delete marker behind (a KV delete or
        purge leaves one per key forever): for keys of things that are gone for good."""
        await self.purge_subject(f"KV_{bucket}", f"$KV.{bucket}.{key}")

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

    async def obj_bucket(self, bucket: str, ttl: float | None = None) -> None:
        """Make sure the object store `bucket` exists; with `ttl`, objects go after that
        many seconds."""
        await self._obj(bucket, ttl)

    async def _obj(self, bucket: str, ttl: float | None = None) -> Any:
        try:
            return await self.js.object_store(bucket)
        except (jserr.BucketNotFoundError, jserr.NotFoundError):
            cfg = jsapi.ObjectStoreConfig(bucket=bucket, replicas=replicas(), ttl=ttl)
            return await self.js.create_object_store(bucket=bucket, config=cfg)

