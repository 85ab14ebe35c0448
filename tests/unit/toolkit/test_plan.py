"""wallaroo.plan: a pipeline is cut into stages at each key_by/collect, and checked whole."""

import pytest

import wallaroo as wl
from wallaroo.api import KeyExtractorSpec
from wallaroo.core.errors import PipelineError
from wallaroo.plan import Route


class Total:
    count = 0


@wl.computation_multi(name="split")
def split(line):
    return line.split()


@wl.key_extractor
def word(w):
    return w


@wl.key_extractor
def length(w):
    return str(len(w))


@wl.state_computation(name="count", state=Total)
def count(w, total):
    total.count += 1
    return f"{w} => {total.count}"


@wl.computation(name="upper")
def upper(s):
    return s.upper()


def lines(name: str = "lines") -> wl.Pipeline:
    return wl.source(name, wl.StreamSource())


OUT = wl.StreamSink("out")


def test_word_count_is_two_stages_routed_by_word() -> None:
    pipeline = lines().to(split).key_by(word).to(count).to_sink(OUT)

    app = wl.build_application("Word Count Application", pipeline, partitions=4)

    assert app.slug == "word_count_application"
    first, second = app.stages
    assert (first.source, first.partitions, first.sinks) == ("lines", 1, ())
    assert [s.name for s in first.steps] == ["split"]
    assert first.route == Route(target=1, extractor=KeyExtractorSpec(word))
    assert not first.stateful
    assert (second.source, second.name, second.partitions, second.route) == (
        None, "count", 4, None)
    assert [s.name for s in second.steps] == ["count"]
    assert second.sinks == (0,) and second.stateful
    assert app.sinks == (OUT,)
    assert list(app.sources) == ["lines"]


def test_key_by_right_after_key_by_keeps_only_the_last_key() -> None:
    pipeline = lines().key_by(word).key_by(length).to(upper).to_sink(OUT)

    app = wl.build_application("app", pipeline)

    assert len(app.stages) == 2
    assert app.stages[0].route == Route(target=1, extractor=KeyExtractorSpec(length))


def test_each_key_by_after_a_step_starts_a_new_stage() -> None:
    pipeline = lines().key_by(word).to(upper).key_by(length).to(count).to_sink(OUT)

    app = wl.build_application("app", pipeline)

    assert [s.name for s in app.stages] == ["lines", "upper", "count"]
    assert app.stages[0].route == Route(1, KeyExtractorSpec(word))
    assert app.stages[1].route == Route(2, KeyExtractorSpec(length))
    assert app.stages[2].sinks == (0,)


def test_collect_gives_one_partition_stage() -> None:
    pipeline = lines().collect().to(count).to_sink(OUT)

    app = wl.build_application("app", pipeline, partitions=16)

    assert app.stages[0].route == Route(target=1, extractor=None)
    assert app.stages[1].partitions == 1


def test_merge_of_two_keyed_sources_routes_both_to_one_keyed_stage() -> None:
    orders = lines("orders").key_by(word)
    market = lines("market_data").key_by(word)
    pipeline = orders.merge(market).to(count).to_sink(OUT)

    app = wl.build_application("market_spread", pipeline)

    assert len(app.stages) == 3
    keyed = [s for s in app.stages if s.source is None]
    assert len(keyed) == 1
    target = keyed[0].index
    assert app.sources["orders"].route == Route(target, KeyExtractorSpec(word))
    assert app.sources["market_data"].route == Route(target, KeyExtractorSpec(word))
    assert keyed[0].sinks == (0,)


def test_merge_then_key_by_is_the_same_shape() -> None:
    pipeline = lines("orders").merge(lines("market_data")).key_by(word).to(count).to_sink(OUT)

    app = wl.build_application("market_spread", pipeline)

    assert len(app.stages) == 3
    assert app.sources["orders"].route == app.sources["market_data"].route == Route(
        2, KeyExtractorSpec(word))


def test_merge_of_unkeyed_sources_runs_the_next_step_in_both_source_stages() -> None:
    pipeline = lines("a").merge(lines("b")).to(upper).to_sink(OUT)

    app = wl.build_application("app", pipeline)

    assert [s.source for s in app.stages] == ["a", "b"]
    for stage in app.stages:
        assert [s.name for s in stage.steps] == ["upper"]
        assert stage.route is None
        assert stage.sinks == (0,)
    assert app.sinks == (OUT,)


def test_to_sinks_sends_every_output_to_each_sink() -> None:
    logs, alerts = wl.StreamSink("logs"), wl.StreamSink("alerts")

    app = wl.build_application("app", lines().to(upper).to_sinks([logs, alerts]))

    assert app.sinks == (logs, alerts)
    assert app.stages[0].sinks == (0, 1)
    assert app.sink_index("alerts") == 1


def test_a_pipeline_needs_a_sink() -> None:
    with pytest.raises(PipelineError, match="no sink"):
        wl.build_application("app", lines().to(upper))


def test_partitions_must_be_positive() -> None:
    with pytest.raises(PipelineError, match="partitions must be >= 1"):
        wl.build_application("app", lines().to_sink(OUT), partitions=0)


def test_two_different_steps_may_not_share_a_name() -> None:
    @wl.computation(name="upper")
    def other_upper(s):
        return s

    pipeline = lines().to(upper).to(other_upper).to_sink(OUT)

    with pytest.raises(PipelineError, match="both named 'upper'"):
        wl.build_application("app", pipeline)


def test_two_different_sinks_may_not_share_a_name() -> None:
    shouting = wl.StreamSink("out", encoder=lambda x: str(x).upper())

    with pytest.raises(PipelineError, match="sinks are both named 'out'"):
        wl.build_application("app", lines().to_sinks([OUT, shouting]))


def test_two_sources_may_not_share_a_name() -> None:
    pipeline = lines("in").merge(lines("in")).to_sink(OUT)

    with pytest.raises(PipelineError, match="two sources share a name"):
        wl.build_application("app", pipeline)


def test_keyed_and_unkeyed_branches_cannot_merge() -> None:
    pipeline = lines("a").key_by(word).merge(lines("b")).to(upper).to_sink(OUT)

    with pytest.raises(PipelineError, match="keyed pipeline with an unkeyed one"):
        wl.build_application("app", pipeline)


def test_collected_and_keyed_branches_cannot_merge() -> None:
    pipeline = lines("a").key_by(word).merge(lines("b").collect()).to(upper).to_sink(OUT)

    with pytest.raises(PipelineError, match="collect"):
        wl.build_application("app", pipeline)


def test_one_pipeline_object_cannot_be_used_twice() -> None:
    branch = lines("a").to(upper)
    pipeline = branch.merge(branch).to_sink(OUT)

    with pytest.raises(PipelineError, match="used twice"):
        wl.build_application("app", pipeline)


def test_retention_defaults_bound_outputs_and_an_app_may_set_its_own() -> None:
    pipe = wl.source("in", wl.StreamSource()).to(upper).to_sink(wl.StreamSink("out"))
    default = wl.build_application("a", pipe)
    assert default.retention.output_max_bytes == 1 << 30
    assert default.retention.output_max_age == 7 * 86_400
    kept = wl.Retention(output_max_age=60, dead_letter_max_bytes=None)
    pipe = wl.source("in", wl.StreamSource()).to(upper).to_sink(wl.StreamSink("out"))
    assert wl.build_application("a", pipe, retention=kept).retention == kept


@pytest.mark.parametrize("bad", [{"output_max_bytes": 0}, {"output_max_age": -1.0},
                                 {"dead_letter_max_bytes": "1G"}, {"output_max_age": True}])
def test_a_retention_limit_is_positive_or_none(bad: dict[str, object]) -> None:
    with pytest.raises(PipelineError, match=f"Retention\\({next(iter(bad))}=.*positive number"):
        wl.Retention(**bad)  # type: ignore[arg-type]


def test_retention_takes_a_retention_object() -> None:
    pipe = wl.source("in", wl.StreamSource()).to(upper).to_sink(wl.StreamSink("out"))
    with pytest.raises(PipelineError, match="retention= takes a wallaroo.Retention"):
        wl.build_application("a", pipe, retention=3600)  # type: ignore[arg-type]
