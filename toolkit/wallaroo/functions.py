"""Serverless functions: plain Python functions deployed to runners and called from anywhere.

    app = wallaroo.App("imaging")

    @app.function(retries=wallaroo.Retries(max_retries=3), timeout=300, concurrency=8)
    def square(x: int) -> int:
        return x * x

    square.remote(4)                  # 16, run on a runner (or its exception, re-raised)
    call = square.spawn(5)            # a FunctionCall; call.get(timeout=10)
    list(square.map(range(10)))       # ordered results, at most 1000 calls in flight

Execution is at least once, results exactly once: a call id names one result, written once;
a retried or duplicated call (same id) gets that result. `f.with_options(idempotency_key=k)`
makes the id a function of (app, function, k)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import queue
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from wallaroo.core import calls, codec
from wallaroo.core.errors import DefinitionError, MissingArgumentsError, f_repr
from wallaroo.core.wire import CallResult, FunctionInfo
from wallaroo.pipeline import DEFAULT_PARTITIONS, Pipeline, slug
from wallaroo.plan import Application, Retention, build_application

if TYPE_CHECKING:  # schedules (zoneinfo, calendar) load when an app schedules a function
    from wallaroo.schedules import Schedule

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
MAX_IN_FLIGHT = 1000
MAP_CHUNK = 100  # calls published together (one wait for their acks) by f.map


@dataclass(frozen=True)
class Retries:
    """Retries of a call whose body raised: `max_retries` more attempts, waiting
    `initial_delay * backoff_coefficient ** (n - 1)` seconds (at most `max_delay`) before
    retry n. Infrastructure failures (a runner lost mid-call) have a budget of their own."""

    max_retries: int = 0
    initial_delay: float = 1.0
    backoff_coefficient: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.initial_delay < 0 or self.max_delay < 0:
            msg = f"{self}: counts and delays must be >= 0, e.g. Retries(max_retries=3)"
            raise DefinitionError(msg)
        if self.backoff_coefficient < 1:
            msg = f"{self}: backoff_coefficient must be >= 1 (1 keeps the delay constant)"
            raise DefinitionError(msg)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry `retry` (1 for the first retry)."""
        return float(min(self.initial_delay * self.backoff_coefficient ** (retry - 1), self.max_delay))


@dataclass(frozen=True)
class CallContext:
    """What `wallaroo.current_call()` tells code running inside a call: its id (stable across
    retries and redeliveries: the key for idempotent side effects), the attempt (1, 2, ... in
    this delivery) and the delivery (how many times runners were handed the call)."""

    call_id: str
    function: str
    attempt: int
    delivery: int


_current: ContextVar[CallContext | None] = ContextVar("wallaroo_current_call", default=None)


def current_call() -> CallContext | None:
    """The call this code runs in, None outside a function call."""
    return _current.get()


def in_call(context: CallContext, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` as the body of a call (what a runner does)."""
    token = _current.set(context)
    try:
        return fn(*args, **kwargs)
    finally:
        _current.reset(token)


async def in_call_async(context: CallContext, fn: Callable[..., Awaitable[T]], *args: Any,
                        **kwargs: Any) -> T:
    """`await fn(*args, **kwargs)` as the body of a call; run it as a task of its own, whose
    context copy keeps the setting to this call."""
    _current.set(context)
    return await fn(*args, **kwargs)


@dataclass(frozen=True)
class FunctionSpec:
    """How a function (or a class's methods) runs on runners."""

    name: str
    target: Callable[..., Any]  # the function, or the class
    retries: Retries
    timeout: float
    concurrency: int
    schedule: Schedule | None = None
    methods: tuple[str, ...] = ()  # a class's @wallaroo.method()s
    enter: tuple[str, ...] = ()  # a class's @wallaroo.enter() methods, run once per runner
    # "json": arguments and results are JSON, and pickled arguments are refused unread, so a
    # caller with the right to call it cannot make a runner unpickle (run) its bytes.
    serializer: calls.Serializer = "pickle"

    @property
    def is_class(self) -> bool:
        return isinstance(self.target, type)

    def info(self) -> FunctionInfo:
        return FunctionInfo(self.name, list(self.methods), self.concurrency, self.timeout,
                            self.schedule.describe() if self.schedule else "", self.serializer)


class _Invoker(Generic[T]):
    """`f.remote(...)` blocks; `await f.remote.aio(...)` does not."""

    def __init__(self, run: Callable[..., T], run_aio: Callable[..., Any]) -> None:
        self._run, self.aio = run, run_aio

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self._run(*args, **kwargs)


class Function:
    """A function of a deployed app, callable from any process: `remote`, `spawn`, `map`,
    `starmap`, `for_each` (each with `.aio`). Calling it directly runs it here, locally."""

    def __init__(self, app: str, name: str, spec: FunctionSpec | None = None, *,
                 url: str | None = None, idempotency_key: str | None = None,
                 serializer: calls.Serializer | None = None) -> None:
        self.app, self.name, self.spec, self.url = slug(app), name, spec, url
        self.idempotency_key = idempotency_key
        self.serializer: calls.Serializer = serializer or (spec.serializer if spec else "pickle")
        self.remote = _Invoker(self._remote, self._remote_aio)
        self.spawn = _Invoker(self._spawn, self._spawn_aio)
        self.map = _Invoker(self._map, _aio_iter(self._map))
        self.starmap = _Invoker(self._starmap, _aio_iter(self._starmap))
        self.for_each = _Invoker(self._for_each, _aio_call(self._for_each))

    def __repr__(self) -> str:
        return f"<wallaroo.Function {self.app}.{self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.spec is None or self.spec.is_class:
            msg = f"{self!r} has no local code here: call it with .remote(...)"
            raise TypeError(msg)
        return self.spec.target(*args, **kwargs)

    @classmethod
    def lookup(cls, app: str, name: str, nats: str | None = None) -> Function:
        """The function `name` ("f" or "Cls.method") of the deployed app `app`, from any
        process; `nats=None` finds the cluster as the CLI does."""
        fn = cls(app, name, url=nats)
        info = fn._portal().run(_check_deployed(fn._portal().client, fn.app, name))
        fn.serializer = "json" if info.serializer == "json" else "pickle"
        return fn

    def with_options(self, *, idempotency_key: str | None = None) -> Function:
        """The same function, its calls named by `idempotency_key`: the first call runs, a
        duplicate gets (or waits for) its result; other arguments raise IdempotencyConflict."""
        return Function(self.app, self.name, self.spec, url=self.url, idempotency_key=idempotency_key,
                        serializer=self.serializer)

    def _portal(self) -> calls.Portal:
        return calls.portal(self.url)

    def _pack(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        return calls.pack_args(args, kwargs, self.serializer, f"{self.app}.{self.name}")

    def _remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._portal().run(self._call(self._pack(args, kwargs), _scoped_id()))

    async def _remote_aio(self, *args: Any, **kwargs: Any) -> Any:
        call = self._call(self._pack(args, kwargs), _scoped_id())
        return await asyncio.wrap_future(self._portal().submit(call))

    async def _call(self, payload: bytes, scoped_id: str | None) -> Any:
        client = self._portal().client
        if scoped_id is not None or self.idempotency_key is not None:
            call_id = await client.submit(self.app, self.name, payload, call_id=scoped_id,
                                          idempotency_key=self.idempotency_key)
            return await client.value(await client.wait(call_id))
        return await client.value(await client.call(self.app, self.name, payload))

    def _spawn(self, *args: Any, **kwargs: Any) -> FunctionCall:
        return self._portal().run(self._spawn_in_loop(self._pack(args, kwargs), _scoped_id()))

    async def _spawn_aio(self, *args: Any, **kwargs: Any) -> FunctionCall:
        spawn = self._spawn_in_loop(self._pack(args, kwargs), _scoped_id())
        return await asyncio.wrap_future(self._portal().submit(spawn))

    async def _spawn_in_loop(self, payload: bytes, scoped_id: str | None) -> FunctionCall:
        client = self._portal().client
        call_id = await client.submit(self.app, self.name, payload, call_id=scoped_id,
                                      idempotency_key=self.idempotency_key)
        return FunctionCall(call_id, self.url, self.name)

    def _map(self, *iterables: Iterable[Any], order_outputs: bool = True, return_exceptions: bool = False,
             max_in_flight: int = MAX_IN_FLIGHT) -> Iterator[Any]:
        """Call the function on every item (zipped like the builtin map), at most
        `max_in_flight` calls outstanding, so a huge iterable is consumed as results come."""
        return self._starmap(zip(*iterables, strict=False), order_outputs=order_outputs,
                             return_exceptions=return_exceptions, max_in_flight=max_in_flight)

    def _starmap(self, argsets: Iterable[Iterable[Any]], *, order_outputs: bool = True,
                return_exceptions: bool = False, max_in_flight: int = MAX_IN_FLIGHT,
                kwargs: dict[str, Any] | None = None) -> Iterator[Any]:
        """`f(*args)` for every `args` in `argsets`; see `map`."""
        payloads = (self._pack(tuple(a), kwargs or {}) for a in argsets)
        outcomes = _Mapper(self, max_in_flight, order_outputs).run(payloads)
        return (_outcome(o, return_exceptions) for o in outcomes)

    def _for_each(self, *iterables: Iterable[Any], ignore_exceptions: bool = False) -> None:
        """Call the function on every item for its side effects; the first error is raised
        unless `ignore_exceptions`."""
        for _ in self._map(*iterables, order_outputs=False, return_exceptions=ignore_exceptions):
            pass


def _aio_iter(sync: Callable[..., Iterator[T]]) -> Callable[..., AsyncIterator[T]]:
    """`async for x in f.map.aio(...)`: the map runs in a thread, feeding this loop."""

    async def run(*args: Any, **kwargs: Any) -> AsyncIterator[T]:
        items = sync(*args, **kwargs)
        done = object()
        while (item := await asyncio.to_thread(next, items, done)) is not done:
            yield item  # type: ignore[misc]

    return run


def _aio_call(sync: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    async def run(*args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(sync, *args, **kwargs)

    return run


def _scoped_id() -> str | None:
    """Inside a stream step, the call's derived id (see calls.StepScope); else None."""
    scope = calls.step_scope.get()
    return None if scope is None else scope.next_call_id()


def _outcome(outcome: tuple[bool, Any], return_exceptions: bool) -> Any:
    ok, value = outcome
    if ok or return_exceptions:
        return value
    raise value


class _Mapper:
    """f.map's engine: the caller's thread pickles and feeds chunks of calls to the calls
    thread, keeping at most `max_in_flight` outstanding, and yields outcomes as chunks finish."""

    def __init__(self, fn: Function, max_in_flight: int, ordered: bool) -> None:
        self.fn, self.ordered = fn, ordered
        self.chunk = max(1, min(MAP_CHUNK, max_in_flight))
        self.max_chunks = max(1, max_in_flight // self.chunk)
        self.done: queue.Queue[Future[list[tuple[bool, Any]]]] = queue.Queue()

    def run(self, payloads: Iterator[bytes]) -> Iterator[tuple[bool, Any]]:
        pending: list[Future[list[tuple[bool, Any]]]] = []
        for chunk in codec.chunked(payloads, self.chunk):
            if len(pending) >= self.max_chunks:
                yield from self._finish_one(pending)
            pending.append(self._start(chunk))
        while pending:
            yield from self._finish_one(pending)

    def _start(self, chunk: list[bytes]) -> Future[list[tuple[bool, Any]]]:
        scope = calls.step_scope.get()
        ids = None if scope is None else [scope.next_call_id() for _ in chunk]
        future = self.fn._portal().submit(_call_chunk(self.fn, chunk, ids))
        if not self.ordered:  # ordered maps take chunks in order: nothing to tell them
            future.add_done_callback(self.done.put)
        return future

    def _finish_one(self, pending: list[Future[list[tuple[bool, Any]]]]) -> list[tuple[bool, Any]]:
        future = pending.pop(0) if self.ordered else self.done.get()
        if not self.ordered:
            pending.remove(future)
        return future.result()


async def _call_chunk(fn: Function, payloads: list[bytes], ids: list[str] | None
                      ) -> list[tuple[bool, Any]]:
    client = fn._portal().client
    results = await client.call_many(fn.app, fn.name, payloads, ids)
    return [await _settle(client, r) for r in results]


async def _settle(client: calls.CallClient, result: CallResult) -> tuple[bool, Any]:
    try:
        return True, await client.value(result)
    except Exception as exc:  # a remote failure is this item's outcome, not the map's crash
        return False, exc


async def _check_deployed(client: calls.CallClient, app: str, name: str) -> FunctionInfo:
    from wallaroo.core import observe
    from wallaroo.core.errors import NotDeployedError

    manifests = {m.slug: m for m in await observe.manifests(client.nats)}
    if app not in manifests:
        raise NotDeployedError(app, sorted(manifests))
    return manifests[app].require_function(name)


class FunctionCall:
    """A spawned call: `get(timeout=None)` waits for its result (TimeoutError while it keeps
    running; `timeout=0` only looks), `cancel()` stops it."""

    def __init__(self, call_id: str, url: str | None = None, function: str = "") -> None:
        self.object_id, self.url, self.function = call_id, url, function
        self.get = _Invoker(self._get, self._get_aio)

    def __repr__(self) -> str:
        return f"<wallaroo.FunctionCall {self.object_id}>"

    @classmethod
    def from_id(cls, call_id: str, nats: str | None = None) -> FunctionCall:
        return cls(call_id, nats)

    def _get(self, timeout: float | None = None) -> Any:
        return calls.portal(self.url).run(self._result(timeout))

    async def _get_aio(self, timeout: float | None = None) -> Any:
        return await asyncio.wrap_future(calls.portal(self.url).submit(self._result(timeout)))

    async def _result(self, timeout: float | None) -> Any:
        client = calls.portal(self.url).client
        return await client.value(await client.wait(self.object_id, timeout))

    def cancel(self, terminate: bool = False) -> None:
        """An unstarted call never runs; a running async call is cancelled; a running sync
        call's result is discarded, and with `terminate=True` the runner process running it
        is replaced (a thread cannot be stopped otherwise): the runner hands back its work,
        exits, and its supervisor (`wallaroo dev`'s pool, systemd) starts a new one."""
        portal = calls.portal(self.url)
        portal.run(portal.client.cancel(self.object_id, terminate, self.function))


def enter(_bare: object = None) -> Callable[[F], F]:
    """Mark a method of an `@app.cls()` class to run once per runner process, before the
    class serves its first call (load a model, open a connection)."""
    return _marker("enter", "__wallaroo_enter__", _bare)


def method(_bare: object = None) -> Callable[[F], F]:
    """Mark a method of an `@app.cls()` class as callable: `Cls().method.remote(...)`."""
    return _marker("method", "__wallaroo_method__", _bare)


def _marker(name: str, attr: str, bare: object) -> Callable[[F], F]:
    _reject_bare(bare, f"wallaroo.{name}")

    def mark(fn: F) -> F:
        setattr(fn, attr, True)
        return fn

    return mark


class Cls:
    """An `@app.cls()` class: `Cls()` is a handle whose marked methods are Functions."""

    def __init__(self, app: App, spec: FunctionSpec) -> None:
        self.app, self.spec = app, spec

    def __call__(self) -> _Instance:
        return _Instance(self)


class _Instance:
    def __init__(self, cls: Cls) -> None:
        self._cls = cls

    def __getattr__(self, name: str) -> Function:
        spec = self._cls.spec
        if name not in spec.methods:
            msg = (f"{spec.name} has no method {name!r} marked @wallaroo.method(); its methods: "
                   f"{', '.join(spec.methods)}")
            raise AttributeError(msg)
        return Function(self._cls.app.slug, f"{spec.name}.{name}", spec)


@dataclass(eq=False)
class App:
    """Functions, classes and pipelines deployed together under one name. Register on it
    with `@app.function()`, `@app.cls()`, `@app.local_entrypoint()`, `app.attach(pipeline)`.

    `serializer` is its functions' default: "pickle" (any Python value; whoever may call
    them may run code on runners) or "json" (JSON values only; pickled arguments are refused
    unread, so callers you do not trust cannot)."""

    name: str
    specs: dict[str, FunctionSpec] = field(default_factory=dict)
    entrypoint: Callable[..., Any] | None = None
    application: Application | None = None
    serializer: calls.Serializer = "pickle"

    def __post_init__(self) -> None:
        slug(self.name)  # a name with no letter or digit fails here
        _check_serializer(self.serializer)

    @property
    def slug(self) -> str:
        return slug(self.name)

    def function(self, _bare: object = None, *, retries: Retries | int = 0, timeout: float = 300.0,
                 concurrency: int = 8, schedule: Schedule | None = None, name: str | None = None,
                 serializer: calls.Serializer | None = None,
                 ) -> Callable[[Callable[..., Any]], Function]:
        """Deploy the decorated function with this app; it becomes a `Function`.
        `serializer` ("pickle" or "json") overrides the app's."""
        _reject_bare(_bare, "app.function")
        policy = _retries(retries)
        _check_limits(timeout, concurrency)
        codec = _check_serializer(serializer or self.serializer)
        when = None if schedule is None else _as_schedule(schedule)

        def decorate(fn: Callable[..., Any]) -> Function:
            spec = FunctionSpec(name or _fn_name(fn), fn, policy, float(timeout), concurrency, when,
                                serializer=codec)
            _check_function(fn, when)
            return Function(self.slug, self._add(spec).name, spec)

        return decorate

    def cls(self, _bare: object = None, *, retries: Retries | int = 0, timeout: float = 300.0,
            concurrency: int = 8, serializer: calls.Serializer | None = None,
            ) -> Callable[[type], Cls]:
        """Deploy the decorated class: one instance per runner process, its @wallaroo.enter()
        methods run once before its first call, its @wallaroo.method()s callable remotely."""
        _reject_bare(_bare, "app.cls")
        policy = _retries(retries)
        _check_limits(timeout, concurrency)
        codec = _check_serializer(serializer or self.serializer)

        def decorate(cls: type) -> Cls:
            methods, enters = _marked(cls)
            spec = FunctionSpec(cls.__name__, cls, policy, float(timeout), concurrency,
                                methods=methods, enter=enters, serializer=codec)
            return Cls(self, self._add(spec))

        return decorate

    def local_entrypoint(self, _bare: object = None) -> Callable[[F], F]:
        """The function `wallaroo run APP.py` runs here, locally, once the app is deployed."""
        _reject_bare(_bare, "app.local_entrypoint")

        def decorate(fn: F) -> F:
            self.entrypoint = fn
            return fn

        return decorate

    def attach(self, pipeline: Pipeline, *, partitions: int = DEFAULT_PARTITIONS,
               retention: Retention | None = None) -> App:
        """Run `pipeline` (a stream pipeline ending in sinks) as part of this app."""
        built = build_application(self.name, pipeline, partitions=partitions, retention=retention)
        self.application = dataclasses.replace(built, calls=True)
        return self

    def built(self) -> Application:
        """The app's stream part: its pipeline, or no stages for an app of functions only."""
        return self.application or Application(self.name, (), (), DEFAULT_PARTITIONS)

    @classmethod
    def of(cls, application: Application) -> App:
        """A Wallaroo 0.6 app (`build_application`) as an App with no functions."""
        return cls(application.name, application=application)

    def _add(self, spec: FunctionSpec) -> FunctionSpec:
        if spec.name in self.specs:
            msg = f"app {self.name!r} already has a function named {spec.name!r}; pass name="
            raise DefinitionError(msg)
        self.specs[spec.name] = spec
        return spec


def _reject_bare(bare: object, decorator: str) -> None:
    """`@app.function` without its parentheses hands the function to the factory."""
    if bare is not None:
        example = f"@{decorator}()"
        raise MissingArgumentsError(decorator.removeprefix("wallaroo."), example)


def _fn_name(fn: Callable[..., Any]) -> str:
    if isinstance(fn, type) or not callable(fn):
        msg = f"@app.function() decorates a function, got {fn!r}; for a class use @app.cls()"
        raise DefinitionError(msg)
    name = getattr(fn, "__name__", "")
    if not name.isidentifier():
        msg = f"{f_repr(fn)} has no usable name ({name!r}); pass @app.function(name=...)"
        raise DefinitionError(msg)
    return str(name)


def _retries(retries: Retries | int) -> Retries:
    if isinstance(retries, Retries):
        return retries
    if isinstance(retries, int) and not isinstance(retries, bool):
        return Retries(max_retries=retries)
    msg = f"retries= takes wallaroo.Retries(...) or a number of retries, got {retries!r}"
    raise DefinitionError(msg)


def _check_limits(timeout: float, concurrency: int) -> None:
    if not timeout > 0:
        msg = f"timeout={timeout!r} must be > 0 seconds"
        raise DefinitionError(msg)
    if not isinstance(concurrency, int) or concurrency < 1:
        msg = f"concurrency={concurrency!r} must be a whole number >= 1"
        raise DefinitionError(msg)


def _check_serializer(serializer: object) -> calls.Serializer:
    if serializer not in calls.SERIALIZERS:
        msg = (f"serializer={serializer!r}: use 'pickle' (any Python value; callers can run code "
               "on runners) or 'json' (JSON values only; safe for callers you do not trust)")
        raise DefinitionError(msg)
    return serializer


def _as_schedule(schedule: object) -> Schedule:
    from wallaroo.schedules import as_schedule

    return as_schedule(schedule)


def _check_function(fn: Callable[..., Any], schedule: Schedule | None) -> None:
    if schedule is None:
        return
    required = [p for p in inspect.signature(fn).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        msg = f"{f_repr(fn)} is scheduled, so it is called with no arguments; give its parameters defaults"
        raise DefinitionError(msg)


def _marked(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(cls, type):
        msg = f"@app.cls() decorates a class, got {cls!r}; for a function use @app.function()"
        raise DefinitionError(msg)
    members = inspect.getmembers(cls, inspect.isfunction)
    methods = tuple(n for n, f in members if getattr(f, "__wallaroo_method__", False))
    enters = tuple(n for n, f in members if getattr(f, "__wallaroo_enter__", False))
    if not methods:
        msg = f"class {cls.__qualname__} has no method marked @wallaroo.method(): nothing to call"
        raise DefinitionError(msg)
    return methods, enters


__all__ = ["App", "CallContext", "Cls", "Function", "FunctionCall", "Retries", "current_call",
           "enter", "method"]
