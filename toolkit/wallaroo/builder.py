"""Wallaroo 0.5's `ApplicationBuilder`, mapped onto this toolkit's pipelines, so a 0.5 app
ports by changing its source and sink lines only:

    @wallaroo.state_computation(name="add votes")
    def add_votes(votes, total):
        total.count += votes.count
        return (Total(votes.letter, total.count), True)   # 0.5: (output, state changed)

    @wallaroo.partition
    def letter(votes):
        return votes.letter

    def application_setup(args):
        ab = wallaroo.ApplicationBuilder("alphabet")
        ab.new_pipeline("votes", wallaroo.StreamSource(decoder))        # was TCPSourceConfig
        ab.to_state_partition(add_votes, Total, "letter state", letter, list("abc"))
        ab.to_sink(wallaroo.StreamSink("totals", encoder))               # was TCPSinkConfig
        return ab.build()

| 0.5 call | pipeline |
|---|---|
| `new_pipeline(name, source)` | `wallaroo.source(name, source)` |
| `to(c)`, `to_parallel(c)` | `.to(c)` |
| `to_stateful(c, State, name)` | `.collect().to(c)`: one state, in one partition |
| `to_state_partition(c, State, name, f, keys)` | `.key_by(f).to(c)`: one state per key |
| `to_state_partition_u64(...)` | the same, the integer key as its decimal str |
| `to_sink(s)`, `to_sinks([s, ...])` | `.to_sink(s)`, `.to_sinks([...])` |
| `build()` | `wallaroo.build_application(name, ...)` |

A state computation may return 0.5's `(output, state_changed)`; the output is taken (state is
kept either way). `partition_keys` need not list every key: any key gets its own state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from wallaroo.api import SPEC_ATTR, StepSpec, as_key_extractor, key_extractor, spec_of
from wallaroo.core.errors import DefinitionError, PipelineError, f_repr
from wallaroo.pipeline import DEFAULT_PARTITIONS, Pipeline, SinkConfig, SourceConfig, slug, source
from wallaroo.plan import Application, Retention, build_pipelines


def partition(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wallaroo 0.5's `@wallaroo.partition`: the same as `@wallaroo.key_extractor`."""
    return key_extractor(fn)


def TCPSourceConfig(host: object, port: object, decoder: object) -> NoReturn:  # noqa: N802
    """Wallaroo's TCP source, not supported here: says which line to write instead."""
    msg = ("wallaroo.TCPSourceConfig: TCP sources are not supported, records arrive through "
           "NATS: write wallaroo.StreamSource(decoder) (fed by `wallaroo send APP SOURCE --file "
           "F`, which splits F by the decoder's header_length/length_fmt) or "
           "wallaroo.FileSource(path, decoder)")
    raise DefinitionError(msg)


def TCPSinkConfig(host: object, port: object, encoder: object) -> NoReturn:  # noqa: N802
    """Wallaroo's TCP sink, not supported here: says which line to write instead."""
    msg = ("wallaroo.TCPSinkConfig: TCP sinks are not supported: write "
           "wallaroo.StreamSink(\"name\", encoder) (read with `wallaroo tail APP name`) or a "
           "connector sink such as wallaroo.FileSink(\"name\", path, encoder)")
    raise DefinitionError(msg)


class ApplicationBuilder:
    """Wallaroo 0.5's application builder: each call adds to the current pipeline; `build()`
    returns the Application (what `application_setup(args)` returns)."""

    def __init__(self, name: str) -> None:
        slug(name)  # a name without a letter or digit fails here
        self.name = name
        self._pipelines: list[Pipeline] = []
        self._current: Pipeline | None = None
        self._states: dict[str, str] = {}  # state name -> the step that holds it

    def new_pipeline(self, name: str, source_config: SourceConfig) -> ApplicationBuilder:
        """Start a pipeline at the source `name` (a wallaroo.StreamSource, FileSource...)."""
        if self._current is not None:
            msg = (f"ApplicationBuilder({self.name!r}).new_pipeline({name!r}): the previous "
                   "pipeline has no sink; end it with to_sink(wallaroo.StreamSink(...)) first")
            raise PipelineError(msg)
        self._current = source(name, source_config)
        return self

    def to(self, computation: Callable[..., Any]) -> ApplicationBuilder:
        self._current = self._pipe("to").to(computation)
        return self

    def to_parallel(self, computation: Callable[..., Any]) -> ApplicationBuilder:
        """Stateless steps run on every partition here anyway: the same as `to`."""
        self._current = self._pipe("to_parallel").to(computation)
        return self

    def to_stateful(self, computation: Callable[..., Any], state_builder: object,
                    state_name: str) -> ApplicationBuilder:
        """One state for every record: all of them go to one partition."""
        step = self._stateful("to_stateful", computation, state_builder, state_name)
        self._current = self._pipe("to_stateful").collect().to(step)
        return self

    def to_state_partition(
        self, computation: Callable[..., Any], state_builder: object, state_name: str,
        partition_function: object, partition_keys: Iterable[Any] | None = None,
    ) -> ApplicationBuilder:
        """One state per key, the key from `partition_function(data)`."""
        return self._partitioned("to_state_partition", computation, state_builder, state_name,
                                 _partition_fn(partition_function), partition_keys)

    def to_state_partition_u64(
        self, computation: Callable[..., Any], state_builder: object, state_name: str,
        partition_function: object, partition_keys: Iterable[Any] | None = None,
    ) -> ApplicationBuilder:
        """As `to_state_partition`, for a partition function returning an integer."""
        return self._partitioned("to_state_partition_u64", computation, state_builder,
                                 state_name, _u64_key(_partition_fn(partition_function)),
                                 partition_keys)

    def to_sink(self, sink_config: SinkConfig) -> ApplicationBuilder:
        return self.to_sinks([sink_config])

    def to_sinks(self, sink_configs: Sequence[SinkConfig]) -> ApplicationBuilder:
        self._pipelines.append(self._pipe("to_sink").to_sinks(sink_configs))
        self._current = None
        return self

    def done(self) -> ApplicationBuilder:
        msg = (f"ApplicationBuilder({self.name!r}).done(): a pipeline without a sink is not "
               "supported: end it with to_sink(wallaroo.StreamSink(\"name\", encoder=...)), "
               "whose outputs `wallaroo tail` reads")
        raise PipelineError(msg)

    def build(self, *, partitions: int = DEFAULT_PARTITIONS,
              retention: Retention | None = None) -> Application:
        if self._current is not None or not self._pipelines:
            msg = (f"ApplicationBuilder({self.name!r}).build(): every pipeline needs "
                   "new_pipeline(name, source), its steps, then to_sink(sink)")
            raise PipelineError(msg)
        return build_pipelines(self.name, self._pipelines, partitions=partitions,
                               retention=retention)

    def _pipe(self, method: str) -> Pipeline:
        if self._current is None:
            msg = (f"ApplicationBuilder({self.name!r}).{method}(): no pipeline is open; start "
                   "one with new_pipeline(name, wallaroo.StreamSource(decoder))")
            raise PipelineError(msg)
        return self._current

    def _partitioned(self, method: str, computation: Callable[..., Any], state_builder: object,
                     state_name: str, key: Callable[[Any], Any],
                     partition_keys: Iterable[Any] | None) -> ApplicationBuilder:
        if partition_keys is not None and not isinstance(partition_keys, Iterable):
            msg = f"{method}: partition_keys must be a list of keys, got {partition_keys!r}"
            raise PipelineError(msg)
        step = self._stateful(method, computation, state_builder, state_name)
        self._current = self._pipe(method).key_by(key).to(step)
        return self

    def _stateful(self, method: str, computation: Callable[..., Any], state_builder: object,
                  state_name: str) -> Callable[..., Any]:
        spec = spec_of(computation)
        if not isinstance(spec, StepSpec) or not spec.kind.startswith("state_"):
            msg = (f"{method}: {_name(computation)} is not a state computation: decorate it "
                   "with @wallaroo.state_computation(name=...)")
            raise PipelineError(msg)
        if not isinstance(state_name, str) or not state_name.strip():
            msg = f"{method}({spec.name!r}): state_name must be a non-empty str, got {state_name!r}"
            raise PipelineError(msg)
        holder = self._states.setdefault(state_name, spec.name)
        if holder != spec.name:
            msg = (f"{method}({spec.name!r}): the state {state_name!r} is already held by step "
                   f"{holder!r}; steps sharing one state is not supported: do both in one step")
            raise PipelineError(msg)
        return _with_state(spec, _state_factory(method, spec.name, state_builder))


def _with_state(spec: StepSpec, state: Callable[[], Any]) -> Callable[..., Any]:
    """A step running `spec.fn` with `state`, taking 0.5's `(output, changed)` apart."""
    fn = spec.fn

    def step(data: Any, st: Any) -> Any:
        return _output(fn(data, st))

    setattr(step, SPEC_ATTR, StepSpec(kind=spec.kind, name=spec.name, fn=step, state=state))
    return step


def _output(result: Any) -> Any:
    """0.5 state computations return (output, state_changed); why any bool second: that is
    the 0.5 contract, and the state is kept here whether it changed or not."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], bool):
        return result[0]
    return result


def _state_factory(method: str, step: str, state_builder: object) -> Callable[[], Any]:
    """A class (or zero-argument factory), or an older StateBuilder object with build()."""
    if callable(state_builder):
        return state_builder
    build = getattr(state_builder, "build", None)
    if callable(build):
        return build  # type: ignore[no-any-return]
    msg = (f"{method}({step!r}): the state must be a class (or a zero-argument factory, or an "
           f"object with build()), got {state_builder!r}")
    raise PipelineError(msg)


def _partition_fn(partition_function: object) -> Callable[[Any], Any]:
    """A function (decorated with @wallaroo.partition or not), or an older partition object
    with a partition(data) method."""
    method = getattr(partition_function, "partition", None)
    if not callable(partition_function) and callable(method):
        return method  # type: ignore[no-any-return]
    return as_key_extractor(partition_function).fn


def _u64_key(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def key(data: Any) -> Any:
        k = fn(data)
        return str(k) if isinstance(k, int) else k

    return key_extractor(key)


def _name(fn: object) -> str:
    return f_repr(fn) if callable(fn) else repr(fn)
