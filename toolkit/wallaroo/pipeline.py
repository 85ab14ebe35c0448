"""Immutable pipeline builder (Wallaroo 0.6 shape) and the sources and sinks it connects."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wallaroo.api import (
    DecoderSpec,
    EncoderSpec,
    KeyExtractorSpec,
    StepSpec,
    as_decoder,
    as_encoder,
    as_key_extractor,
    as_step,
    text_encoder,
    utf8_decoder,
)
from wallaroo.core.errors import PipelineError

DEFAULT_PARTITIONS = 8


@dataclass(frozen=True)
class StreamSource:
    """Records published into the app's JetStream ingest subject (`wallaroo send`, `dev
    --input`, or any NATS client); each record's bytes go through `decoder`."""

    decoder: Callable[[bytes], Any] = utf8_decoder
    partitions: int = 1

    def decoder_spec(self) -> DecoderSpec:
        return as_decoder(self.decoder)


@dataclass(frozen=True)
class StreamSink:
    """Outputs, encoded by `encoder`, land in the app's output stream under `name`
    (deduplicated by message id; read them with `wallaroo tail APP NAME`)."""

    name: str
    encoder: Callable[[Any], bytes | str] = text_encoder

    def encoder_spec(self) -> EncoderSpec:
        return as_encoder(self.encoder)


SourceConfig = StreamSource
SinkConfig = StreamSink


@dataclass(frozen=True)
class Source:
    name: str
    config: SourceConfig


@dataclass(frozen=True)
class Step:
    spec: StepSpec


@dataclass(frozen=True)
class KeyBy:
    spec: KeyExtractorSpec


@dataclass(frozen=True)
class Collect:
    pass


@dataclass(frozen=True)
class Merge:
    pass


@dataclass(frozen=True)
class Sinks:
    configs: tuple[SinkConfig, ...]


Op = Source | Step | KeyBy | Collect | Merge | Sinks


@dataclass(frozen=True, eq=False)
class Pipeline:
    """One node of the pipeline graph. Every method returns a new Pipeline."""

    op: Op
    parents: tuple[Pipeline, ...] = field(default=())

    def _then(self, op: Op, *others: Pipeline) -> Pipeline:
        if self.terminated:
            msg = (f"cannot add {_describe(op)} after a sink: to_sink()/to_sinks() ends the "
                   "pipeline; add steps before it")
            raise PipelineError(msg)
        return Pipeline(op, (self, *others))

    @property
    def terminated(self) -> bool:
        return isinstance(self.op, Sinks)

    def to(self, step: Callable[..., Any]) -> Pipeline:
        """Run `step` (a @computation or @state_computation) on every record."""
        return self._then(Step(as_step(step)))

    def key_by(self, extractor: Callable[[Any], Any]) -> Pipeline:
        """Partition records by `extractor(record)`; state after this is per key."""
        return self._then(KeyBy(as_key_extractor(extractor)))

    def collect(self) -> Pipeline:
        """Gather every record into one partition (for global aggregates)."""
        return self._then(Collect())

    def merge(self, other: Pipeline) -> Pipeline:
        """Join another pipeline's records into this one."""
        if not isinstance(other, Pipeline):
            msg = f"merge() takes a pipeline (from wallaroo.source(...)), got {other!r}"
            raise PipelineError(msg)
        if other.terminated:
            msg = "cannot merge a pipeline that already ends in a sink; merge before to_sink()"
            raise PipelineError(msg)
        return self._then(Merge(), other)

    def to_sink(self, config: SinkConfig) -> Pipeline:
        """End the pipeline: every output goes to `config`."""
        return self.to_sinks([config])

    def to_sinks(self, configs: Sequence[SinkConfig]) -> Pipeline:
        """End the pipeline: every output goes to each of `configs`."""
        configs = tuple(configs)
        if not configs:
            msg = "to_sinks() needs at least one sink config"
            raise PipelineError(msg)
        for cfg in configs:
            if not isinstance(cfg, StreamSink):
                msg = f"to_sink() takes a sink config such as wallaroo.StreamSink(...), got {cfg!r}"
                raise PipelineError(msg)
        return self._then(Sinks(configs))


def _describe(op: Op) -> str:
    if isinstance(op, Step):
        return f"step {op.spec.name!r}"
    return f"{type(op).__name__.lower()}()"


def source(name: str, config: SourceConfig) -> Pipeline:
    """Start a pipeline at the source `name`."""
    if not isinstance(name, str) or not name.strip():
        msg = f"source() needs a non-empty name, got {name!r}"
        raise PipelineError(msg)
    if not isinstance(config, StreamSource):
        msg = (f"source {name!r}: the config must be a source config such as "
               f"wallaroo.StreamSource(decoder=...), got {config!r}")
        raise PipelineError(msg)
    config.decoder_spec()
    if config.partitions < 1:
        msg = f"source {name!r}: partitions must be >= 1, got {config.partitions}"
        raise PipelineError(msg)
    return Pipeline(Source(name, config))


def slug(name: str) -> str:
    """The app's name as used in NATS stream names and subjects."""
    s = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not s:
        msg = f"app name {name!r} needs at least one letter or digit"
        raise PipelineError(msg)
    return s
