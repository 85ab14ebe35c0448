"""Wallaroo 0.5's ApplicationBuilder builds the same plan as the 0.6-style pipeline, runs
through wallaroo.testing.run, and names what it does not support."""

from __future__ import annotations

import struct
from typing import Any

import pytest

import wallaroo as wl
import wallaroo.testing
from wallaroo.core.errors import DefinitionError, PipelineError
from wallaroo.plan import Application


class Total:
    def __init__(self) -> None:
        self.count = 0


@wl.decoder(header_length=4, length_fmt=">I")
def decode(bs: bytes) -> tuple[str, int]:
    letter, count = struct.unpack(">sI", bs)
    return letter.decode(), count


@wl.computation(name="upper")
def upper(vote: tuple[str, int]) -> tuple[str, int]:
    return vote[0].upper(), vote[1]


@wl.state_computation(name="add votes")  # 0.5: no state=, the builder names it
def add_votes(vote: tuple[str, int], total: Total) -> tuple[str, bool]:
    total.count += vote[1]
    return f"{vote[0]}={total.count}", True  # 0.5: (output, state changed)


@wl.partition
def letter(vote: tuple[str, int]) -> str:
    return vote[0]


@wl.encoder
def encode(out: str) -> str:
    return out


VOTES = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
RECORDS = [struct.pack(">sI", k.encode(), n) for k, n in VOTES]


def built_0_5(partitions: int = 8) -> Application:
    ab = wl.ApplicationBuilder("alphabet")
    ab.new_pipeline("votes", wl.StreamSource(decode))
    ab.to(upper)
    ab.to_state_partition(add_votes, Total, "letter state", letter, ["A", "B", "C"])
    ab.to_sink(wl.StreamSink("totals", encode))
    return ab.build(partitions=partitions)


def built_0_6(partitions: int = 8) -> Application:
    @wl.state_computation(name="add votes", state=Total)
    def add(vote: tuple[str, int], total: Total) -> str:
        total.count += vote[1]
        return f"{vote[0]}={total.count}"

    pipeline = (wl.source("votes", wl.StreamSource(decode)).to(upper).key_by(letter).to(add)
                .to_sink(wl.StreamSink("totals", encode)))
    return wl.build_application("alphabet", pipeline, partitions=partitions)


def shape(app: Application) -> list[tuple[Any, ...]]:
    """A plan as what it does: stages, their steps, state, routes, sinks, decoder framing."""
    return [(s.name, s.partitions, [(st.name, st.kind, st.state) for st in s.steps],
             s.route and (s.route.target, s.route.extractor), s.sinks, s.source,
             s.decoder and s.decoder.framing) for s in app.stages]


def test_a_partitioned_0_5_app_plans_like_its_0_6_pipeline() -> None:
    assert shape(built_0_5()) == shape(built_0_6())
    assert [s.name for s in built_0_5().sinks] == ["totals"]


def test_a_partitioned_0_5_app_sums_per_key_like_its_0_6_pipeline() -> None:
    expected = ["A=1", "B=2", "A=4", "C=4", "B=7"]
    assert wallaroo.testing.run(built_0_5(), RECORDS).lines("totals") == expected
    assert wallaroo.testing.run(built_0_6(), RECORDS).lines("totals") == expected


def test_state_survives_a_crash_and_restore() -> None:
    result = wallaroo.testing.run(built_0_5(), RECORDS, crash_after=[2, 4])
    assert result.lines("totals") == ["A=1", "B=2", "A=4", "C=4", "B=7"]


def test_to_stateful_keeps_one_state_for_every_record() -> None:
    ab = wl.ApplicationBuilder("total")
    ab.new_pipeline("votes", wl.StreamSource(decode))
    ab.to_stateful(add_votes, Total, "total")
    ab.to_sink(wl.StreamSink("totals", encode))
    app = ab.build()

    assert [(s.partitions, s.route and s.route.extractor) for s in app.stages] == [
        (1, None), (1, None)]  # collect(): one partition, no key
    assert wallaroo.testing.run(app, RECORDS).lines("totals") == [
        "a=1", "b=3", "a=6", "c=10", "b=15"]


def test_u64_keys_older_state_builders_and_partition_objects() -> None:
    class Builder:  # Wallaroo 0.4/0.5 StateBuilder
        def build(self) -> Total:
            return Total()

    class ByParity:  # an older PartitionFunction object
        def partition(self, vote: tuple[str, int]) -> int:
            return vote[1] % 2

    ab = wl.ApplicationBuilder("parity")
    ab.new_pipeline("votes", wl.StreamSource(decode))
    ab.to_parallel(upper)
    ab.to_state_partition_u64(add_votes, Builder(), "parity state", ByParity(), [0, 1])
    ab.to_sink(wl.StreamSink("totals", encode))
    out = wallaroo.testing.run(ab.build(), RECORDS).lines("totals")
    assert out == ["A=1", "B=2", "A=4", "C=6", "B=9"]  # odd: 1,3,5 / even: 2,4


def test_several_pipelines_build_into_one_app() -> None:
    ab = wl.ApplicationBuilder("two")
    ab.new_pipeline("left", wl.StreamSource(decode)).to(upper).to_sink(wl.StreamSink("l", str))
    ab.new_pipeline("right", wl.StreamSource(decode))
    ab.to_state_partition(add_votes, Total, "s", letter).to_sink(wl.StreamSink("r", encode))
    app = ab.build()

    assert sorted(app.sources) == ["left", "right"]
    result = wallaroo.testing.run(app, {"left": RECORDS[:1], "right": RECORDS[:3]})
    assert result.lines("l") == ["('A', 1)"] and result.lines("r") == ["a=1", "b=2", "a=4"]


def test_unsupported_and_misused_calls_name_the_method_and_the_fix() -> None:
    ab = wl.ApplicationBuilder("app")
    with pytest.raises(PipelineError, match=r"to\(\): no pipeline is open.*new_pipeline"):
        ab.to(upper)
    ab.new_pipeline("votes", wl.StreamSource(decode))
    with pytest.raises(PipelineError, match=r"done\(\): a pipeline without a sink is not "
                       r"supported: end it with to_sink"):
        ab.done()
    with pytest.raises(PipelineError, match="not a state computation"):
        ab.to_stateful(upper, Total, "s")
    with pytest.raises(PipelineError, match="the state must be a class"):
        ab.to_stateful(add_votes, 5, "s")
    with pytest.raises(PipelineError, match="previous pipeline has no sink"):
        ab.new_pipeline("again", wl.StreamSource(decode))
    with pytest.raises(PipelineError, match=r"build\(\): every pipeline needs"):
        ab.build()


def test_a_state_shared_by_two_steps_is_refused() -> None:
    @wl.state_computation(name="other")
    def other(vote: tuple[str, int], total: Total) -> str:
        return ""

    ab = wl.ApplicationBuilder("app").new_pipeline("votes", wl.StreamSource(decode))
    ab.to_state_partition(add_votes, Total, "shared", letter)
    with pytest.raises(PipelineError, match="'shared' is already held by step 'add votes'"):
        ab.to_state_partition(other, Total, "shared", letter)


def test_a_0_5_state_computation_in_a_0_6_pipeline_asks_for_state() -> None:
    start = wl.source("votes", wl.StreamSource(decode)).key_by(letter)
    with pytest.raises(DefinitionError, match=r"without state=: give it one .*ApplicationBuilder"):
        start.to(add_votes)


def test_tcp_configs_say_which_line_to_write_instead() -> None:
    with pytest.raises(DefinitionError, match=r"TCPSourceConfig: .* wallaroo.StreamSource\(decoder\)"):
        wl.TCPSourceConfig("127.0.0.1", 7000, decode)
    with pytest.raises(DefinitionError, match=r"TCPSinkConfig: .* wallaroo.StreamSink"):
        wl.TCPSinkConfig("127.0.0.1", 5555, encode)
