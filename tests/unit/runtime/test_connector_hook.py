"""wallaroo_runtime.connectors.hook: an app's connectors become one leased task each (plain
stream sources and sinks need none)."""

from __future__ import annotations

import asyncio
from typing import Any

import wallaroo as wl
from wallaroo_runtime.connectors import connector_tasks


@wl.computation(name="upper")
def upper(s: str) -> str:
    return s.upper()


def test_connector_tasks_cover_every_connector_and_nothing_else() -> None:
    files = wl.source("files", wl.FileSource("/data/in.txt"))
    objects = wl.source("objects", wl.S3Source("bucket", "in/"))
    plain = wl.source("plain", wl.StreamSource())
    pipeline = files.merge(objects).merge(plain).to(upper).to_sinks([
        wl.StreamSink("plain"), wl.FileSink("file", "/data/out.txt"), wl.S3Sink("s3", "bucket", "out"),
        wl.HttpSink("http", "http://127.0.0.1:9/hook"), wl.NatsSink("nats", "ext.out"),
    ])
    app = wl.build_application("conn app", pipeline)
    nats: Any = object()  # only captured by the factories, never called here

    tasks = connector_tasks(nats, app.slug, app, asyncio.Event())
    assert [key for key, _ in tasks] == [
        "conn_app.src.files", "conn_app.src.objects", "conn_app.sink.file", "conn_app.sink.s3",
        "conn_app.sink.http", "conn_app.sink.nats"]
    assert all(callable(factory) for _, factory in tasks)
