"""wallaroo.pipeline: an immutable builder that refuses wrong shapes as soon as it sees them."""

import pytest

import wallaroo as wl
from wallaroo.core.errors import DefinitionError, PipelineError
from wallaroo.pipeline import KeyBy, Sinks, Source, Step, slug


@wl.computation(name="upper")
def upper(s):
    return s.upper()


@wl.key_extractor
def first_letter(s):
    return s[:1]


def test_every_method_returns_a_new_pipeline_and_leaves_the_old_one_alone() -> None:
    start = wl.source("in", wl.StreamSource())
    stepped = start.to(upper)
    keyed = stepped.key_by(first_letter)
    done = keyed.to_sink(wl.StreamSink("out"))

    assert len({id(p) for p in (start, stepped, keyed, done)}) == 4
    assert isinstance(start.op, Source) and start.parents == ()
    assert isinstance(stepped.op, Step) and stepped.parents == (start,)
    assert isinstance(keyed.op, KeyBy) and keyed.parents == (stepped,)
    assert isinstance(done.op, Sinks) and done.terminated
    assert not keyed.terminated


def test_a_pipeline_can_be_extended_twice_from_the_same_node() -> None:
    start = wl.source("in", wl.StreamSource())
    a = start.to(upper)
    b = start.collect()

    assert a.parents == (start,) and b.parents == (start,)
    assert a is not b


def test_no_step_after_a_sink() -> None:
    done = wl.source("in", wl.StreamSource()).to_sink(wl.StreamSink("out"))

    with pytest.raises(PipelineError, match="step 'upper' after a sink"):
        done.to(upper)


def test_to_refuses_an_undecorated_function() -> None:
    def plain(x):
        return x

    with pytest.raises(DefinitionError, match="is not a step"):
        wl.source("in", wl.StreamSource()).to(plain)


def test_merge_refuses_a_finished_pipeline() -> None:
    done = wl.source("b", wl.StreamSource()).to_sink(wl.StreamSink("out"))

    with pytest.raises(PipelineError, match="already ends in a sink"):
        wl.source("a", wl.StreamSource()).merge(done)


def test_to_sinks_needs_sink_configs() -> None:
    start = wl.source("in", wl.StreamSource())

    with pytest.raises(PipelineError, match="at least one"):
        start.to_sinks([])
    with pytest.raises(PipelineError, match="sink config"):
        start.to_sink("out")  # type: ignore[arg-type]


def test_source_checks_name_config_and_partitions() -> None:
    with pytest.raises(PipelineError, match="non-empty name"):
        wl.source("", wl.StreamSource())
    with pytest.raises(PipelineError, match="source config"):
        wl.source("in", wl.StreamSink("out"))  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="partitions must be >= 1"):
        wl.source("in", wl.StreamSource(partitions=0))


def test_slug() -> None:
    assert slug("Word Count Application") == "word_count_application"
    assert slug("  market-spread!! v2 ") == "market_spread_v2"
    with pytest.raises(PipelineError, match="letter or digit"):
        slug("!!!")
