"""wallaroo.connectors: the configs validate when made, fit anywhere a StreamSource/StreamSink
does (pipelines, wallaroo.testing, pickled artifacts), and the planner keeps source configs
so the runtime finds every connector of an app."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import wallaroo as wl
import wallaroo.testing
from wallaroo.connectors import ConnectorConfigError


@wl.computation(name="upper")
def upper(s: str) -> str:
    return s.upper()


def app_with_connectors() -> wl.Application:
    """Two connector sources merged, one sink of each kind and a plain one."""
    files = wl.source("files", wl.FileSource("/data/in.txt"))
    objects = wl.source("objects", wl.S3Source("bucket", "in/"))
    pipeline = files.merge(objects).to(upper).to_sinks([
        wl.StreamSink("plain"), wl.FileSink("file", "/data/out.txt"), wl.S3Sink("s3", "bucket", "out"),
        wl.HttpSink("http", "http://127.0.0.1:9/hook"), wl.NatsSink("nats", "ext.out"),
    ])
    return wl.build_application("conn app", pipeline)


def test_connector_configs_run_in_the_testing_harness() -> None:
    app = wl.build_application("t", wl.source("in", wl.FileSource("/x")).to(upper)
                               .to_sink(wl.FileSink("out", "/y")))
    assert wallaroo.testing.run(app, ["a", "b"]).lines("out") == ["A", "B"]


def test_the_plan_keeps_each_source_config() -> None:
    app = app_with_connectors()
    assert app.sources["files"].source_config == wl.FileSource("/data/in.txt")
    assert isinstance(app.sources["objects"].source_config, wl.S3Source)
    assert pickle.loads(pickle.dumps(app.sinks)) == app.sinks


@pytest.mark.parametrize(("make", "field"), [
    (lambda: wl.FileSource(""), "path"),
    (lambda: wl.FileSource("/x", poll=0), "poll"),
    (lambda: wl.S3Source("", "p"), "bucket"),
    (lambda: wl.FileSink("out", "  "), "path"),
    (lambda: wl.HttpSink("out", "ftp://host/x"), "url"),
    (lambda: wl.HttpSink("out", "http://host/x", timeout=-1), "timeout"),
    (lambda: wl.NatsSink("out", "ext.*"), "subject"),
    (lambda: wl.NatsSink("out", "wl.app.out.x"), "subject"),
    (lambda: wl.PartsSink("out", ""), "target"),
    (lambda: wl.PartsSink("out", "s3:///prefix"), "target"),
    (lambda: wl.PartsSink("out", "/data", suffix="a/b"), "suffix"),
])
def test_bad_values_fail_when_the_config_is_made(make: Any, field: str) -> None:
    with pytest.raises(ConnectorConfigError, match=f"{field} must be") as info:
        make()
    assert info.value.field == field


def test_configs_are_frozen_and_compare_by_value() -> None:
    sink = wl.S3Sink("out", "bucket", "/archive/")
    assert sink.prefix == "archive" and sink == wl.S3Sink("out", "bucket", "archive")
    with pytest.raises(AttributeError):
        sink.bucket = "other"  # type: ignore[misc]


def test_a_parts_sink_target_is_a_directory_or_an_s3_prefix() -> None:
    local = wl.PartsSink("out", "/data/job/")
    assert local.target == "/data/job" and local.s3 is None and local.suffix == ".txt"
    remote = wl.PartsSink("out", "s3://bucket/jobs/words/", suffix=".csv")
    assert remote.s3 == ("bucket", "jobs/words") and remote.suffix == ".csv"
    assert wl.PartsSink("out", "s3://bucket").s3 == ("bucket", "")
    assert pickle.loads(pickle.dumps(remote)) == remote
