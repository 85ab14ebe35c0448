"""The caller's side of serverless function calls, over NATS: submit a call, wait for its
result, claim idempotency keys, cancel. Used by `wallaroo.functions` (f.remote, f.spawn, f.map
in any process) and by runners (calls made inside stream steps).

A call is a CallRequest published with Nats-Msg-Id = call id into the app's calls stream; its
result is a CallResult written once into the `WL_RESULTS` KV bucket (first write wins), then
announced on `wl._done.<call id>`. A waiter listens there first and only then reads the bucket,
so a result is either read or announced to it: no polling."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import pickle
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import cloudpickle

from wallaroo.core.errors import (
    CallCancelled,
    IdempotencyConflict,
    NotJsonError,
    PickledArgumentsRefused,
    RemoteError,
    WallarooError,
)
from wallaroo.core.names import BLOBS_BUCKET, IDEMPOTENCY_BUCKET, RESULTS_BUCKET, AppNames
from wallaroo.core.wire import CallRequest, CallResult, CancelNotice, IdempotencyClaim
from wallaroo.nats.protocol import CREDS_ENV, TLS_CA_ENV, Out

if TYPE_CHECKING:
    from wallaroo.nats import Nats

T = TypeVar("T")
DEFAULT_NATS = "nats://127.0.0.1:4222"
DEV_URL_FILE = Path(".wallaroo/dev/url")
DEV_CREDS_DIR = Path(".wallaroo/dev/creds")
DEV_TLS_CA = Path(".wallaroo/dev/tls/ca.pem")
INLINE_MAX = 256 * 1024  # larger arguments and results go through the object store
RESULT_TTL = 7 * 24 * 3600.0  # seconds a result is kept (the results bucket's max age)
RECHECK = 5.0  # seconds between bucket reads of a long wait (see CallClient._settled)
CANCEL_WAIT = 30.0  # seconds a cancel waits for a runner to record it


def cluster_url() -> str:
    """Where the cluster is: $WALLAROO_NATS, else a `wallaroo dev` running in this folder,
    else localhost. The CLI's --nats default, and Function.lookup's with nats=None."""
    env = os.environ.get("WALLAROO_NATS")
    if env:
        return env
    if DEV_URL_FILE.is_file():
        return DEV_URL_FILE.read_text().strip()
    return DEFAULT_NATS


def cluster_creds(role: str) -> Path | None:
    """The credentials to connect with as `role` (runner, deployer, client): the nkey seed
    file $WALLAROO_CREDS names, else the role's file of a `wallaroo dev` in this folder."""
    env = os.environ.get(CREDS_ENV)
    if env:
        return Path(env)
    dev = DEV_CREDS_DIR / f"{role}.nk"
    return dev if dev.is_file() else None


def cluster_tls_ca() -> Path | None:
    """The CA to verify a tls:// cluster with: $WALLAROO_TLS_CA, else the CA of a
    `wallaroo dev --tls` in this folder (None: the system's CAs)."""
    env = os.environ.get(TLS_CA_ENV)
    if env:
        return Path(env)
    return DEV_TLS_CA if DEV_TLS_CA.is_file() else None


def done_subject(call_id: str) -> str:
    """Where a call's result is announced: `wl._done.fc.<client>.<n>` for a fresh call (its
    client hears all of its own with one subscription), `wl._done.<id>` for any other."""
    kind, _, rest = call_id.partition("-")
    if kind == "fc" and rest.count("-") == 1:
        return "wl._done.fc." + rest.replace("-", ".")
    return f"wl._done.{call_id}"


def cancel_subject(call_id: str) -> str:
    """Where a cancel is told to the runner running the call (runners listen to them all)."""
    return f"wl._cancel.{call_id}"


CANCELS = "wl._cancel.>"


def new_call_id() -> str:
    return "fc-" + uuid.uuid4().hex


def derived_call_id(*parts: object) -> str:
    """A call id that the same parts always give (calls from stream steps, schedule ticks):
    a re-run attaches to the call made the first time instead of making another."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]
    return "fd-" + digest


@dataclass
class StepScope:
    """Set while a stream step runs on one record (apps that call functions): calls made
    there get ids derived from (app, stage, partition, record, step, call index), so a batch
    run again after a crash or a retry attaches to the calls it made the first time."""

    where: tuple[str, int, int]  # (app slug, stage, partition)
    step: str
    rid: tuple[int, int]  # (input message seq, record index)
    made: int = 0

    def next_call_id(self) -> str:
        self.made += 1
        return derived_call_id("step", *self.where, self.step, *self.rid, self.made)


step_scope: ContextVar[StepScope | None] = ContextVar("wallaroo_step_scope", default=None)


Serializer = Literal["pickle", "json"]
SERIALIZERS: tuple[Serializer, ...] = ("pickle", "json")
# Marks JSON arguments and values. Pickles (protocol 2+) start with b"\x80", so a payload
# says what it is, and a runner never needs to try unpickling to find out.
JSON_MARK = b"json:"


def pack_args(args: tuple[Any, ...], kwargs: dict[str, Any], serializer: Serializer = "pickle",
              function: str = "the function") -> bytes:
    """The call's arguments, pickled or as JSON (`{"args": [...], "kwargs": {...}}` after
    JSON_MARK); keyword arguments in name order, so that `f(a=1, b=2)` and `f(b=2, a=1)` are
    the same arguments to an idempotency key."""
    ordered = dict(sorted(kwargs.items()))
    if serializer == "json":
        return _json_bytes({"args": list(args), "kwargs": ordered}, function, "an argument")
    return bytes(cloudpickle.dumps((tuple(args), ordered), protocol=5))


def unpack_args(data: bytes, serializer: Serializer = "pickle", function: str = "the function"
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments `pack_args` made. JSON ones are always accepted; pickled ones only by a
    function that takes pickles: a serializer="json" function refuses them unread."""
    if data.startswith(JSON_MARK):
        body = json.loads(data[len(JSON_MARK):])
        if not (isinstance(body, dict) and isinstance(body.get("args"), list)
                and isinstance(body.get("kwargs", {}), dict)):
            msg = 'JSON arguments must be {"args": [...], "kwargs": {...}}'
            raise ValueError(msg)
        return tuple(body["args"]), dict(body.get("kwargs", {}))
    if serializer == "json":
        raise PickledArgumentsRefused(function)
    args, kwargs = pickle.loads(data)
    return tuple(args), dict(kwargs)


def pack_value(value: Any, serializer: Serializer = "pickle", function: str = "the function") -> bytes:
    """A call's return value as the function's serializer writes it."""
    if serializer == "json":
        return _json_bytes(value, function, "the return value")
    return bytes(cloudpickle.dumps(value, protocol=5))


def unpack_value(data: bytes) -> Any:
    """A value `pack_value` made (runners write results; callers trust them)."""
    if data.startswith(JSON_MARK):
        return json.loads(data[len(JSON_MARK):])
    return pickle.loads(data)


def _json_bytes(value: Any, function: str, what: str) -> bytes:
    try:
        return JSON_MARK + json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as err:
        raise NotJsonError(function, what, str(err)) from None


class CallClient:
    """Calls over one NATS connection. Async: run it on the connection's event loop.

    Fresh calls get ids `fc-<client>-<n>`, announced under `wl._done.fc.<client>.<n>`: one
    subscription per client hears all of them. A waiter for any other call (an idempotency
    key's, a stream step's, one looked up by id) listens on that call's own subject."""

    def __init__(self, nats: Nats) -> None:
        self.nats = nats
        self.nonce = uuid.uuid4().hex[:16]
        self._made = itertools.count(1)
        self._expected: dict[str, asyncio.Future[CallResult]] = {}
        self._listening: Callable[[], Awaitable[None]] | None = None

    async def setup(self) -> None:
        await self.nats.kv_bucket(RESULTS_BUCKET, ttl=RESULT_TTL)
        await self.nats.kv_bucket(IDEMPOTENCY_BUCKET, ttl=RESULT_TTL)

    def fresh_id(self) -> str:
        return f"fc-{self.nonce}-{next(self._made)}"

    async def expect(self, call_id: str) -> asyncio.Future[CallResult]:
        """A future for the result of this client's fresh call `call_id`; ask before
        publishing the call (a fresh id has no result until then)."""
        if self._listening is None:
            self._listening = await self.nats.listen(f"wl._done.fc.{self.nonce}.>", self._announced)
        future = self._expected[call_id] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._expected.pop(call_id, None))
        return future

    def _announced(self, data: bytes) -> None:
        result = CallResult.from_wire(data)
        future = self._expected.get(result.call_id)
        if future is not None and not future.done():
            future.set_result(result)

    async def submit(self, slug: str, function: str, payload: bytes, *, call_id: str | None = None,
                     idempotency_key: str | None = None, fresh: bool = False) -> str:
        """Publish a call of `function` with pickled (args, kwargs) `payload`; its call id.
        With `idempotency_key`, the key's call if it already has one (same arguments), so a
        duplicate attaches to it; with `call_id`, that call (`fresh`: a new id from
        `fresh_id`, which spares the runner a look for an earlier result)."""
        fresh = fresh or (call_id is None and idempotency_key is None)
        if idempotency_key is not None:
            call_id = await self._claim(slug, function, idempotency_key, payload)
        call_id = call_id or self.fresh_id()
        await self.nats.publish(AppNames(slug).call(function),
                                await self._request(call_id, slug, function, payload, fresh),
                                msg_id=call_id)
        return call_id

    async def call(self, slug: str, function: str, payload: bytes) -> CallResult:
        """Make a fresh call and wait for its result."""
        call_id = self.fresh_id()
        future = await self.expect(call_id)
        await self.submit(slug, function, payload, call_id=call_id, fresh=True)
        return await self._settled(call_id, future, None)

    async def call_many(self, slug: str, function: str, payloads: list[bytes],
                        ids: list[str] | None = None) -> list[CallResult]:
        """Make calls together (one wait for all the publish acks) and wait for all their
        results: what f.map does with each chunk. Without `ids`, fresh ones; with them, calls
        that may have been made before (a stream step run again)."""
        if ids is not None:
            return list(await asyncio.gather(*(self._call_again(slug, function, p, i)
                                               for p, i in zip(payloads, ids, strict=True))))
        ids = [self.fresh_id() for _ in payloads]
        futures = [await self.expect(i) for i in ids]
        subject = AppNames(slug).call(function)
        await self.nats.publish_all([Out(subject, await self._request(i, slug, function, p, True), i)
                                     for i, p in zip(ids, payloads, strict=True)])
        waits = (self._settled(i, f, None) for i, f in zip(ids, futures, strict=True))
        return list(await asyncio.gather(*waits))

    async def _call_again(self, slug: str, function: str, payload: bytes, call_id: str) -> CallResult:
        async with self.watching(call_id) as announced:
            stored = await self.stored(call_id)
            if stored is not None:
                return stored
            await self.submit(slug, function, payload, call_id=call_id)
            return await self._settled(call_id, announced, None)

    async def _request(self, call_id: str, slug: str, function: str, payload: bytes,
                       fresh: bool) -> bytes:
        ref = ""
        if len(payload) > INLINE_MAX:
            ref = f"args/{call_id}"
            await self.nats.obj_put(BLOBS_BUCKET, ref, payload)
            payload = b""
        return CallRequest(call_id, slug, function, payload, ref, time.time(), fresh).to_wire()

    async def _claim(self, slug: str, function: str, key: str, payload: bytes) -> str:
        name = hashlib.sha256(f"{slug}\x1f{function}\x1f{key}".encode()).hexdigest()
        claim = IdempotencyClaim(new_call_id(), hashlib.sha256(payload).hexdigest())
        if await self.nats.kv_create(IDEMPOTENCY_BUCKET, name, claim.to_wire()) is not None:
            return claim.call_id
        raw = await self.nats.kv_get(IDEMPOTENCY_BUCKET, name)
        if raw is None:  # expired between our two reads: claim it again
            return await self._claim(slug, function, key, payload)
        held = IdempotencyClaim.from_wire(raw)
        if held.digest != claim.digest:
            raise IdempotencyConflict(function, key, held.call_id)
        return held.call_id

    async def wait(self, call_id: str, timeout: float | None = None) -> CallResult:
        """The call's result; TimeoutError if it has none after `timeout` seconds (the call
        goes on). `timeout=0` only looks."""
        async with self.watching(call_id) as announced:
            stored = await self.stored(call_id)
            if stored is not None:
                return stored
            if timeout is not None and timeout <= 0:
                raise TimeoutError(call_id)
            return await self._settled(call_id, announced, timeout)

    async def _settled(self, call_id: str, announced: asyncio.Future[CallResult],
                       timeout: float | None) -> CallResult:
        """The announced result. Announcements are core NATS, lost if this connection was
        away at that moment; so a wait that lasts also reads the bucket now and then (every
        RECHECK seconds): a safety net, never the way results normally arrive."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = RECHECK if deadline is None else min(RECHECK, deadline - time.monotonic())
            done, _ = await asyncio.wait({announced}, timeout=max(0.0, left))
            if done:
                return announced.result()
            stored = await self.stored(call_id)
            if stored is not None:
                return stored
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(call_id)

    def watching(self, call_id: str) -> _Watch:
        """`async with client.watching(id) as announced`: a future set when the result is
        announced; reads of the bucket made inside the block cannot miss it."""
        return _Watch(self, call_id)

    async def stored(self, call_id: str) -> CallResult | None:
        raw = await self.nats.kv_get(RESULTS_BUCKET, call_id)
        return None if raw is None else CallResult.from_wire(raw)

    async def record(self, result: CallResult) -> CallResult:
        """Write `result` unless the call has one; announce and return THE result."""
        data = result.to_wire()
        if await self.nats.kv_create(RESULTS_BUCKET, result.call_id, data) is None:
            stored = await self.nats.kv_get(RESULTS_BUCKET, result.call_id)
            if stored is None:  # only if the bucket lost the key between create and get
                msg = f"result of {result.call_id} vanished from {RESULTS_BUCKET}"
                raise WallarooError(msg)
            data, result = stored, CallResult.from_wire(stored)
        await self.nats.announce(done_subject(result.call_id), data)
        return result

    async def cancel(self, call_id: str, terminate: bool = False, function: str = "",
                     timeout: float = CANCEL_WAIT) -> CallResult:
        """Ask runners to cancel the call (callers may not write results: a runner records
        the cancel, or the result the call had already); THE result of the call."""
        notice = CancelNotice(call_id, terminate, function)
        async with self.watching(call_id) as announced:
            await self.nats.announce(cancel_subject(call_id), notice.to_wire())
            try:
                return await self._settled(call_id, announced, timeout)
            except TimeoutError:
                msg = (f"no runner recorded the cancel of {call_id} within {timeout:g}s: is any "
                       "runner serving its app?")
                raise WallarooError(msg) from None

    async def value(self, result: CallResult) -> Any:
        """The call's return value, or its exception raised (see `unwrap`)."""
        if result.status == "ok" and result.value_ref:
            data = await self.nats.obj_get(BLOBS_BUCKET, result.value_ref)
            if data is None:
                msg = f"the result of {result.call_id} expired from the object store"
                raise WallarooError(msg)
            return unpack_value(data)
        return unwrap(result)


class _Watch:
    def __init__(self, client: CallClient, call_id: str) -> None:
        self.client, self.call_id = client, call_id
        self.stop: Callable[[], Awaitable[None]] | None = None

    async def __aenter__(self) -> asyncio.Future[CallResult]:
        future: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()

        def on_result(data: bytes) -> None:
            if not future.done():
                future.set_result(CallResult.from_wire(data))

        self.stop = await self.client.nats.listen(done_subject(self.call_id), on_result)
        return future

    async def __aexit__(self, *exc: object) -> None:
        if self.stop is not None:
            await self.stop()


def unwrap(result: CallResult) -> Any:
    """The value of an inline "ok" result; else the remote exception, rebuilt with its remote
    traceback attached as a note, or a RemoteError when its type cannot be rebuilt here."""
    if result.status == "ok":
        return unpack_value(result.value)
    if result.status == "cancelled":
        raise CallCancelled(result.call_id)
    raise rebuilt(result)


def rebuilt(result: CallResult) -> BaseException:
    try:
        exc = pickle.loads(result.error) if result.error else None
    except Exception:  # the class is not importable here, or will not unpickle: say it as text
        exc = None
    if not isinstance(exc, BaseException):
        return RemoteError(result.error_type, result.error_message, result.traceback)
    exc.add_note(f"remote traceback (call {result.call_id}):\n{result.traceback}")
    return exc


class Portal:
    """A CallClient on an event loop of its own thread, so plain synchronous code (a local
    entrypoint, a script, a stream step's thread) can call functions: `portal.run(coro)`
    blocks the calling thread only."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wallaroo-calls",
                                       daemon=True)
        self.thread.start()
        self.client: CallClient = self.run(self._connect())

    async def _connect(self) -> CallClient:
        from wallaroo.nats import Nats  # here: a module that only defines functions needs no client

        nats = await Nats.connect(self.url, name="wallaroo-caller", creds=cluster_creds("client"),
                                  tls_ca=cluster_tls_ca())
        client = CallClient(nats)
        await client.setup()
        return client

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        if threading.current_thread() is self.thread:
            coro.close()
            msg = ("a blocking call (f.remote(), call.get()) was made on the calls thread itself; "
                   "from async code use `await f.remote.aio(...)` instead")
            raise WallarooError(msg)
        if blocking_calls_forbidden():
            coro.close()
            msg = ("a function was called from a stream step of a pipeline not attached to a "
                   "wallaroo.App (its calls would not be exactly once per record), or from the "
                   "runner's event loop (it would stall): attach the pipeline to a wallaroo.App "
                   "(`app.attach(pipeline)`)")
            raise WallarooError(msg)
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        if self.loop.is_running():
            self.run(self.client.nats.close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


_thread_rules = threading.local()


def forbid_blocking_calls() -> None:
    """Refuse blocking function calls made from this thread (a runner's event loop thread)."""
    _thread_rules.no_blocking = True


def blocking_calls_forbidden() -> bool:
    """Does this thread refuse blocking function calls (see forbid_blocking_calls)?"""
    return bool(getattr(_thread_rules, "no_blocking", False))


_portals: dict[str, Portal] = {}
_portals_lock = threading.Lock()


def portal(url: str | None = None) -> Portal:
    """The process's connection to the cluster at `url` (default: `cluster_url()`), made on
    first use and kept: a connection cache, like any client library's."""
    url = url or cluster_url()
    with _portals_lock:
        found = _portals.get(url)
        if found is None:
            found = _portals[url] = Portal(url)
        return found


def close_portals() -> None:
    with _portals_lock:
        for p in _portals.values():
            p.close()
        _portals.clear()
