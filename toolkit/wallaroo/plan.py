"""Cut a pipeline into stages (at each key_by/collect) and freeze it as an Application."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from wallaroo.api import DecoderSpec, KeyExtractorSpec, StepSpec
from wallaroo.core.errors import PipelineError
from wallaroo.core.names import AppNames, source_sender
from wallaroo.pipeline import (
    DEFAULT_PARTITIONS,
    Collect,
    KeyBy,
    Merge,
    Pipeline,
    SinkConfig,
    Sinks,
    Source,
    SourceConfig,
    Step,
    slug,
)


@dataclass(frozen=True)
class Route:
    """Where a stage's outputs go: `target` stage, keyed by `extractor` (None: collect)."""

    target: int
    extractor: KeyExtractorSpec | None


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    partitions: int
    steps: tuple[StepSpec, ...]
    route: Route | None
    sinks: tuple[int, ...]
    source: str | None = None
    decoder: DecoderSpec | None = None
    # Why kept: connector sources (wallaroo.connectors) are run by the runtime from their config.
    source_config: SourceConfig | None = None
    # The layout (wallaroo.core.repartition): the stage's partitions are numbered
    # base..base+partitions-1 in subjects, changelogs, leases and producer ids, so a redeploy
    # with another count gets fresh names; `prev` (base, count) is the layout it replaced,
    # drained and split by key into this one while the version runs.
    base: int = 0
    prev: tuple[int, int] | None = None

    @property
    def stateful(self) -> bool:
        return any(s.stateful for s in self.steps)

    @property
    def parts(self) -> range:
        """The numbers of its partitions in the current layout."""
        return range(self.base, self.base + self.partitions)

    @property
    def prev_parts(self) -> range:
        """The numbers of the partitions of the layout being drained (empty: none)."""
        return range(self.prev[0], self.prev[0] + self.prev[1]) if self.prev else range(0)


DAY = 86_400.0
GIB = 1 << 30


@dataclass(frozen=True)
class Retention:
    """How much of an app's output and dead-letter streams JetStream keeps. Past either
    limit the oldest messages go (Kafka's retention.ms and retention.bytes); None: no limit.
    Why limits by default: an endless stream must not fill the disk and memory of
    nats-server. A sink that falls further behind than this loses what was dropped (it logs
    the gap), so size it for the longest sink outage you want to ride out."""

    output_max_age: float | None = 7 * DAY
    output_max_bytes: int | None = GIB
    dead_letter_max_age: float | None = 30 * DAY
    dead_letter_max_bytes: int | None = GIB

    def __post_init__(self) -> None:
        for what, value in vars(self).items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and (not number or value <= 0):
                msg = (f"Retention({what}={value!r}): a limit is a positive number "
                       "(seconds or bytes), or None for no limit")
                raise PipelineError(msg)


@dataclass(frozen=True)
class Application:
    """A built app: what `wallaroo deploy` ships and a runner runs."""

    name: str
    stages: tuple[Stage, ...]
    sinks: tuple[SinkConfig, ...]
    partitions: int
    # Steps may call serverless functions (a pipeline attached to a wallaroo.App): they run
    # off the runner's event loop, and their calls get ids derived from the record.
    calls: bool = False
    retention: Retention = field(default_factory=Retention)

    @property
    def slug(self) -> str:
        return slug(self.name)

    @property
    def sources(self) -> dict[str, Stage]:
        return {s.source: s for s in self.stages if s.source is not None}

    def sink_index(self, name: str) -> int:
        return [s.name for s in self.sinks].index(name)

    @property
    def is_job(self) -> bool:
        """Are all its sources bounded (read what exists, then end)? Then it is a job: it
        finishes once every record is processed."""
        configs = [s.source_config for s in self.stages if s.source is not None]
        return bool(configs) and all(getattr(c, "bounded", False) for c in configs)

    def senders_of(self, stage: Stage) -> frozenset[str]:
        """Who sends `stage` its end of input: its source, or every partition of each stage
        routing into it."""
        if stage.source is not None:
            return frozenset({source_sender(stage.source)})
        return frozenset(AppNames.producer(s.index, p) for s in self.stages
                         if s.route is not None and s.route.target == stage.index
                         for p in (*s.prev_parts, *s.parts))

    def laid_out(self, layouts: dict[int, tuple[int, tuple[int, int] | None]]) -> Application:
        """This app with the deployed layout of each stage: index -> (base, prev)."""
        stages = tuple(replace(s, base=layouts[s.index][0], prev=layouts[s.index][1])
                       if s.index in layouts else s for s in self.stages)
        return replace(self, stages=stages)


@dataclass(eq=False)
class _StageBuilder:
    partitions: int
    source: str | None = None
    decoder: DecoderSpec | None = None
    source_config: SourceConfig | None = None
    steps: list[StepSpec] = field(default_factory=list)
    route: tuple[KeyExtractorSpec | None, _StageBuilder] | None = None
    sinks: list[SinkConfig] = field(default_factory=list)


_Pending = KeyBy | Collect | None
_End = tuple[_StageBuilder, _Pending]


class _Planner:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.builders: list[_StageBuilder] = []
        self.seen: set[int] = set()

    def new_stage(self, partitions: int, **kw: object) -> _StageBuilder:
        sb = _StageBuilder(partitions=partitions, **kw)  # type: ignore[arg-type]
        self.builders.append(sb)
        return sb

    def ends(self, node: Pipeline) -> list[_End]:
        if id(node) in self.seen:
            msg = ("a pipeline object is used twice; branching one pipeline into two is not "
                   "supported: build each branch from its own wallaroo.source(...)")
            raise PipelineError(msg)
        self.seen.add(id(node))
        op = node.op
        if isinstance(op, Source):
            cfg = op.config
            sb = self.new_stage(cfg.partitions, source=op.name, decoder=cfg.decoder_spec(),
                                source_config=cfg)
            return [(sb, None)]
        parents = [end for p in node.parents for end in self.ends(p)]
        if isinstance(op, Merge):
            return parents
        if isinstance(op, KeyBy | Collect):
            return [(sb, op) for sb, _ in parents]
        stages = self.enter(parents)
        for sb in stages:
            if isinstance(op, Step):
                sb.steps.append(op.spec)
            elif isinstance(op, Sinks):
                sb.sinks.extend(op.configs)
        return [(sb, None) for sb in stages]

    def enter(self, ends: list[_End]) -> list[_StageBuilder]:
        """The stages the next op runs in: the same ones, or one new stage after a key_by."""
        pending = [p for _, p in ends if p is not None]
        if not pending:
            return [sb for sb, _ in ends]
        if len(pending) != len(ends):
            msg = ("merge() joins a keyed pipeline with an unkeyed one: call .key_by() on both "
                   "branches before merging, or after the merge")
            raise PipelineError(msg)
        if len({type(p) for p in pending}) != 1:
            msg = "merge() joins a collect()ed pipeline with a key_by() one; use one or the other"
            raise PipelineError(msg)
        collect = isinstance(pending[0], Collect)
        nb = self.new_stage(1 if collect else self.partitions)
        for sb, p in ends:
            sb.route = (p.spec if isinstance(p, KeyBy) else None, nb)
        return [nb]


def build_application(
    name: str, pipeline: Pipeline, *, partitions: int = DEFAULT_PARTITIONS,
    retention: Retention | None = None,
) -> Application:
    """Freeze `pipeline` into an Application named `name`. Keyed stages get `partitions`
    partitions, fixed for the app's life (keys map to them with a stable hash). `retention`
    bounds its output and dead-letter streams (default: `Retention()`)."""
    return build_pipelines(name, [pipeline], partitions=partitions, retention=retention)


def build_pipelines(
    name: str, pipelines: list[Pipeline], *, partitions: int = DEFAULT_PARTITIONS,
    retention: Retention | None = None,
) -> Application:
    """`build_application` of several independent pipelines (Wallaroo 0.5's
    ApplicationBuilder may start several with new_pipeline), each from its own source."""
    slug(name)
    for pipeline in pipelines:
        if not isinstance(pipeline, Pipeline):
            msg = f"build_application({name!r}, ...) takes a pipeline, got {pipeline!r}"
            raise PipelineError(msg)
        if not pipeline.terminated:
            msg = (f"app {name!r}: the pipeline has no sink; end it with "
                   ".to_sink(wallaroo.StreamSink(\"out\", encoder=...))")
            raise PipelineError(msg)
    if partitions < 1:
        msg = f"app {name!r}: partitions must be >= 1, got {partitions}"
        raise PipelineError(msg)
    if retention is not None and not isinstance(retention, Retention):
        msg = f"app {name!r}: retention= takes a wallaroo.Retention(...), got {retention!r}"
        raise PipelineError(msg)
    planner = _Planner(partitions)
    for pipeline in pipelines:
        planner.ends(pipeline)
    app = _freeze(name, planner.builders, partitions)
    _check_input_ends(app)
    return app if retention is None else replace(app, retention=retention)


def _check_input_ends(app: Application) -> None:
    """A step that emits only at end of input (global_windows) needs input that ends."""
    if app.is_job:
        return
    for step in (s for stage in app.stages for s in stage.steps if s.at_end_only):
        msg = (f"app {app.name!r}: step {step.name!r} emits only when input ends, but this app's "
               "input never ends: make every source bounded=True to run it as a job, or use "
               "count_windows/range_windows on an endless stream")
        raise PipelineError(msg)


def _freeze(name: str, builders: list[_StageBuilder], partitions: int) -> Application:
    _check_unique_steps(builders)
    sinks = _unique_sinks(builders)
    sink_names = [s.name for s in sinks]
    index = {id(sb): i for i, sb in enumerate(builders)}
    stages = tuple(
        Stage(
            index=i,
            name=_stage_name(sb),
            partitions=sb.partitions,
            steps=tuple(sb.steps),
            route=Route(index[id(sb.route[1])], sb.route[0]) if sb.route else None,
            sinks=tuple(sink_names.index(c.name) for c in sb.sinks),
            source=sb.source,
            decoder=sb.decoder,
            source_config=sb.source_config,
        )
        for i, sb in enumerate(builders)
    )
    sources = [s.source for s in stages if s.source]
    if len(set(sources)) != len(sources):
        msg = f"app {name!r}: two sources share a name ({sources}); give each its own name"
        raise PipelineError(msg)
    return Application(name=name, stages=stages, sinks=sinks, partitions=partitions)


def _stage_name(sb: _StageBuilder) -> str:
    if sb.source is not None:
        return sb.source
    return sb.steps[0].name if sb.steps else "sink"


def _check_unique_steps(builders: list[_StageBuilder]) -> None:
    by_name: dict[str, StepSpec] = {}
    for spec in (s for sb in builders for s in sb.steps):
        other = by_name.setdefault(spec.name, spec)
        if other is not spec:
            msg = (f"two different steps are both named {spec.name!r} "
                   f"({other.fn.__qualname__} and {spec.fn.__qualname__}); step names must be "
                   "unique: rename one")
            raise PipelineError(msg)


def _unique_sinks(builders: list[_StageBuilder]) -> tuple[SinkConfig, ...]:
    by_name: dict[str, SinkConfig] = {}
    for cfg in (c for sb in builders for c in sb.sinks):
        if by_name.setdefault(cfg.name, cfg) != cfg:
            msg = f"two different sinks are both named {cfg.name!r}; sink names must be unique"
            raise PipelineError(msg)
    return tuple(by_name.values())
