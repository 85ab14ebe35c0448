"""Runs one serverless function (or one class's methods) of one app version on this runner.

Every runner reads the function's calls from one shared durable consumer of the app's calls
stream (work-queue retention: each call goes to one runner at a time). For each call:
1. a call that already has a result (a duplicate, a redelivery, a cancel) is only announced
   again and acked;
2. one delivered more than `max_deliveries` times (its runners kept dying) gets a RunnerLost
   result: never JetStream's silent max_deliver drop;
3. otherwise the body runs, in a worker thread (sync) or a task (async), never on this event
   loop, `concurrency` at a time, each attempt bounded by `timeout`, failures retried per the
   function's Retries, while `in_progress` keeps the message from being redelivered;
4. the result is written with KV create (first write wins: a cancel, or a faster duplicate,
   beats it), announced, and only then is the message acked.
Execution is at least once; the recorded result is the one result of the call id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from wallaroo.core import calls
from wallaroo.core.errors import FunctionTimeout, NotJsonError, RunnerLost, WireError
from wallaroo.core.names import BLOBS_BUCKET, AppNames
from wallaroo.core.wire import CallRequest, CallResult, CancelNotice, DeadLetter, FunctionReport
from wallaroo.functions import CallContext, FunctionSpec, in_call, in_call_async
from wallaroo.nats import InMsg, Nats, Out

log = logging.getLogger("wallaroo.functions")
LATENCY_SAMPLES = 1000
CANCELS_KEPT = 100_000
CLOCK_SKEW = 5.0  # seconds of clock difference between a caller's machine and a runner's


@dataclass(frozen=True)
class ExecutorConfig:
    ack_wait: float = 10.0  # a call whose runner went silent this long is delivered again
    max_deliveries: int = 8  # then the call fails with RunnerLost
    fetch_timeout: float = 0.25


@dataclass
class FunctionStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def count(self, result: CallResult, created: float) -> None:
        if result.status == "ok":
            self.done += 1
        elif result.status == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1
        self.latencies.append(max(0.0, result.finished - created))

    def report(self, running: int) -> FunctionReport:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else 0.0

        return FunctionReport(self.done, self.failed, self.retried, self.cancelled, running,
                              pct(0.5), pct(0.99))


@dataclass
class Cancels:
    """Cancels this executor heard (runners hear every cancel, as they come). A fresh call can
    only have a result, before it first runs, if it was cancelled: so it is looked up in the
    results bucket only if its cancel was heard, or could have been missed (made before this
    executor listened, give or take clock skew between machines)."""

    since: float = float("inf")
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=CANCELS_KEPT))
    ids: set[str] = field(default_factory=set)

    def heard(self, call_id: str) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.ids.discard(self.recent[0])
        self.recent.append(call_id)
        self.ids.add(call_id)

    def maybe(self, req: CallRequest) -> bool:
        return req.call_id in self.ids or req.created < self.since + CLOCK_SKEW


class BodyLoop:
    """An event loop on a thread of its own for async function bodies: user code (which may
    block, async or not) never runs on the runner's loop, which beats, leases and commits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name=self.name, daemon=True).start()
        # Cancelling the returned future cancels the task on the body loop.
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


class _Cancelled(Exception):  # noqa: N818 - control flow: a cancel was recorded meanwhile
    pass


class FunctionExecutor:
    def __init__(self, nats: Nats, slug: str, spec: FunctionSpec, runner_id: str,
                 cfg: ExecutorConfig | None = None,
                 on_terminate: Callable[[str], None] = lambda call_id: None) -> None:
        """`on_terminate(call_id)`: a running sync call was cancelled with terminate=True;
        the runner is to replace its process."""
        self.nats, self.slug, self.spec, self.runner_id = nats, slug, spec, runner_id
        self.on_terminate = on_terminate
        self.cfg = cfg or ExecutorConfig()
        self.client = calls.CallClient(nats)
        self.names = AppNames(slug)
        self.pool = self._new_pool()
        self.bodies = BodyLoop(f"wl-{spec.name}-async")  # async bodies: off the runner's loop
        self.running: set[asyncio.Task[None]] = set()
        self.buffered: deque[InMsg] = deque()  # fetched, waiting for a free slot
        self.recording: set[asyncio.Task[CallResult]] = set()  # cancels being recorded
        # call id -> its message, its cancel signal, and the function it calls
        self.in_hand: dict[str, tuple[InMsg, asyncio.Future[None], str]] = {}
        self.stats = FunctionStats()
        self.cancels = Cancels()
        self.stop = asyncio.Event()
        self._instance: Any = None
        self._entering = asyncio.Lock()

    async def run(self) -> None:
        """Serve calls until `stop` is set, then let the calls in hand finish."""
        await self.client.setup()
        consumer = await self.nats.shared_consumer(
            self.names.calls_stream, AppNames.function_durable(self.spec.name),
            self.names.calls_of(self.spec.name, self.spec.is_class),
            ack_wait=self.cfg.ack_wait, max_ack_pending=max(64, 4 * self.spec.concurrency))
        stop_listening = await self.nats.listen(calls.CANCELS, self._cancelled)
        self.cancels.since = time.time()
        keepalive = asyncio.create_task(self._keep_alive())
        try:
            while not self.stop.is_set():
                await self._serve(consumer)
            await self._hand_back_buffered()
            if self.running or self.recording:
                await asyncio.wait(self.running | self.recording)
        finally:
            # Left early (cancelled, or NATS failed): calls in hand are not acked, so they are
            # delivered again; none may record a failure of this executor as their result.
            for task in self.running:
                task.cancel()
            await asyncio.gather(*self.running, return_exceptions=True)
            keepalive.cancel()
            await stop_listening()
            await consumer.close()
            self.pool.shutdown(wait=False)
            self.bodies.close()

    async def _serve(self, consumer: Any) -> None:
        """Start buffered calls while slots are free; fetch more once the buffer is empty.
        Why a buffer of up to `concurrency` calls: one pull then serves many calls, and the
        buffer stays short enough that no buffered call outlives its ack_wait."""
        while self.buffered and len(self.running) < self.spec.concurrency:
            self._start_call(self.buffered.popleft())
        if self.buffered:
            await asyncio.wait(self.running, timeout=self.cfg.fetch_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            return
        self.buffered.extend(await consumer.fetch(self.spec.concurrency, self.cfg.fetch_timeout))

    async def _hand_back_buffered(self) -> None:
        """Calls fetched but not started when this executor stops (a new version took over
        while a pull was out) go back to the server at once, for the new version's executor:
        held here, they would wait out their ack_wait."""
        buffered, self.buffered = list(self.buffered), deque()
        for m in buffered:
            if m.nak is not None:
                await m.nak()

    def _start_call(self, m: InMsg) -> None:
        task = asyncio.create_task(self._handle(m))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    def _cancelled(self, data: bytes) -> None:
        try:
            notice = CancelNotice.from_wire(data)
        except WireError as err:  # not from a caller of ours: nothing to cancel
            log.warning("ignored a malformed cancel notice: %s", err)
            return
        self.cancels.heard(notice.call_id)
        if notice.function in ("", self.spec.name) or notice.function.startswith(f"{self.spec.name}."):
            # Callers may not write results: the cancel is recorded here (first write wins,
            # so a call that finished first keeps its result).
            task = asyncio.create_task(self.client.record(self._cancel_result(notice.call_id)))
            self.recording.add(task)
            task.add_done_callback(self.recording.discard)
        held = self.in_hand.get(notice.call_id)
        if held is None or held[1].done():
            return
        held[1].set_result(None)
        if notice.terminate and not self._is_async(notice.call_id):
            log.warning("call %s of %s cancelled with terminate: replacing this runner process, "
                        "the only way to stop its thread", notice.call_id, self.spec.name)
            self.on_terminate(notice.call_id)

    def report(self) -> FunctionReport:
        return self.stats.report(len(self.running))

    # --- one call ---------------------------------------------------------------------------

    async def _handle(self, m: InMsg) -> None:
        try:
            req = CallRequest.from_wire(m.data)
        except WireError as err:
            await self._dead_letter(m, err)
            return
        try:
            result = await self._outcome(req, m)
            self.stats.count(await self.client.record(result), req.created)
        except Exception as err:  # NATS trouble: not acked, so it is delivered again
            log.error("call %s of %s: %s", req.call_id, req.function, err, exc_info=True)
            return
        await m.ack()

    async def _outcome(self, req: CallRequest, m: InMsg) -> CallResult:
        if not req.fresh or m.deliveries > 1 or self.cancels.maybe(req):
            stored = await self.client.stored(req.call_id)
            if stored is not None:
                return stored
        if m.deliveries > self.cfg.max_deliveries:
            return self._failed(req, RunnerLost(req.call_id, m.deliveries - 1), 0, m.deliveries)
        cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_hand[req.call_id] = (m, cancelled, req.function)
        try:
            return await self._attempts(req, m.deliveries, cancelled)
        finally:
            self.in_hand.pop(req.call_id, None)

    async def _keep_alive(self) -> None:
        """Reset the ack_wait of every call in hand: only a silent runner loses its calls."""
        while True:
            await asyncio.sleep(self.cfg.ack_wait / 3)
            for m in [held[0] for held in self.in_hand.values()] + list(self.buffered):
                if m.in_progress is not None:
                    with contextlib.suppress(Exception):  # a missed beat only risks a redelivery
                        await m.in_progress()

    async def _attempts(self, req: CallRequest, delivery: int,
                        cancelled: asyncio.Future[None]) -> CallResult:
        started = time.time()
        payload = await self._args(req)  # NATS trouble here: not the call's fault, not recorded
        try:
            args, kwargs = calls.unpack_args(payload, self.spec.serializer, req.function)
        except Exception as exc:  # refused, or any decoding error: arguments it cannot rebuild
            return self._failed(req, exc, 0, delivery, started)
        attempt = 0
        while True:
            attempt += 1
            ctx = CallContext(req.call_id, req.function, attempt, delivery)
            try:
                value = await self._attempt(ctx, args, kwargs, cancelled)
            except _Cancelled:
                return self._cancel_result(req.call_id)
            except Exception as exc:  # the user's code failed: retry per its policy, or fail
                if attempt > self.spec.retries.max_retries:
                    return self._failed(req, exc, attempt, delivery, started)
                self.stats.retried += 1
                log.warning("call %s of %s failed (attempt %d), retrying: %s", req.call_id,
                            req.function, attempt, exc)
                await asyncio.wait({cancelled}, timeout=self.spec.retries.delay(attempt))
                if cancelled.done():
                    return self._cancel_result(req.call_id)
                continue
            return await self._succeeded(req, value, attempt, delivery, started)

    async def _args(self, req: CallRequest) -> bytes:
        if not req.args_ref:
            return req.args
        data = await self.nats.obj_get(BLOBS_BUCKET, req.args_ref)
        if data is None:
            msg = f"the arguments of {req.call_id} ({req.args_ref}) are gone from the object store"
            raise LookupError(msg)
        return data

    async def _attempt(self, ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any],
                       cancelled: asyncio.Future[None]) -> Any:
        body = await self._start(ctx, args, kwargs)
        done, _ = await asyncio.wait({body, cancelled}, timeout=self.spec.timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if body in done:
            return body.result()
        body.cancel()  # an async body stops; a thread cannot be stopped: its result is dropped
        if not asyncio.iscoroutinefunction(await self._target(ctx.function)):
            self._abandon_pool()
        if cancelled in done:
            raise _Cancelled
        raise FunctionTimeout(ctx.function, self.spec.timeout)

    def _cancel_result(self, call_id: str) -> CallResult:
        return CallResult(call_id, "cancelled", runner=self.runner_id, finished=time.time())

    async def _start(self, ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> asyncio.Future[Any]:
        target = await self._target(ctx.function)
        if asyncio.iscoroutinefunction(target):
            return self.bodies.run(in_call_async(ctx, target, *args, **kwargs))
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.pool, lambda: in_call(ctx, target, *args, **kwargs))

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.spec.concurrency, thread_name_prefix=f"wl-{self.spec.name}")

    def _abandon_pool(self) -> None:
        """A sync attempt timed out or was cancelled, and its thread runs on: new calls get a
        fresh pool, so that thread never holds a slot they wait for. The old pool's threads
        end when their calls return (their results are dropped)."""
        old, self.pool = self.pool, self._new_pool()
        old.shutdown(wait=False)

    def _is_async(self, call_id: str) -> bool:
        held = self.in_hand.get(call_id)
        function = held[2] if held else self.spec.name
        target = self.spec.target
        if self.spec.is_class and "." in function:
            target = getattr(self.spec.target, function.split(".", 1)[1], target)
        return asyncio.iscoroutinefunction(target)

    async def _target(self, function: str) -> Callable[..., Any]:
        if not self.spec.is_class:
            return self.spec.target
        method = function.split(".", 1)[1]
        if method not in self.spec.methods:
            msg = f"{self.spec.name} has no method {method!r} marked @wallaroo.method()"
            raise AttributeError(msg)
        return getattr(await self._instance_made(), method)  # type: ignore[no-any-return]

    async def _instance_made(self) -> Any:
        """The class's one instance on this runner, its @enter methods run (in a thread)."""
        async with self._entering:
            if self._instance is None:
                loop = asyncio.get_running_loop()
                self._instance = await loop.run_in_executor(self.pool, self._enter)
        return self._instance

    def _enter(self) -> Any:
        instance = self.spec.target()
        for name in self.spec.enter:
            getattr(instance, name)()
        return instance

    # --- results ------------------------------------------------------------------------------

    async def _succeeded(self, req: CallRequest, value: Any, attempts: int, delivery: int,
                         started: float) -> CallResult:
        try:
            data = calls.pack_value(value, self.spec.serializer, req.function)
        except NotJsonError as exc:
            return self._failed(req, exc, attempts, delivery, started)
        except Exception as exc:  # a value that cannot travel fails the call, saying why
            return self._failed(req, TypeError(f"the return value does not pickle: {exc}"),
                                attempts, delivery, started)
        ref = ""
        if len(data) > calls.INLINE_MAX:
            ref = f"results/{req.call_id}"
            await self.nats.obj_put(BLOBS_BUCKET, ref, data)
            data = b""
        return CallResult(req.call_id, "ok", value=data, value_ref=ref, attempts=attempts,
                          deliveries=delivery, runner=self.runner_id, started=started,
                          finished=time.time())

    def _failed(self, req: CallRequest, exc: BaseException, attempts: int, delivery: int,
                started: float = 0.0) -> CallResult:
        kind = type(exc)
        return CallResult(
            req.call_id, "error", error_type=f"{kind.__module__}.{kind.__qualname__}",
            error_message=str(exc), traceback="".join(traceback.format_exception(exc)),
            error=_pickled(exc), attempts=attempts, deliveries=delivery, runner=self.runner_id,
            started=started or time.time(), finished=time.time())

    async def _dead_letter(self, m: InMsg, err: WireError) -> None:
        """A calls-stream message that is no call: kept whole in the dead-letter stream."""
        letter = DeadLetter(f"function {self.spec.name}", "decode", "malformed_message", str(err),
                            "", 1, None, m.data, (m.stream_seq, 0), self.slug, "", time.time())
        out = Out(self.names.calls_dlq, letter.to_wire(), f"call-dlq:{m.stream_seq}")
        await self.nats.publish_all([out])
        await m.ack()
        log.warning("dead-lettered a malformed message from the calls of %s: %s", self.spec.name, err)


def _pickled(exc: BaseException) -> bytes:
    try:
        data = pickle.dumps(exc, protocol=5)
        pickle.loads(data)  # some exceptions pickle but do not unpickle (required args)
    except Exception:  # then the caller gets a RemoteError with the type's name and text
        return b""
    return data

