"""Connector sinks on a real nats-server (moto's S3 server, a loopback HTTP server): every
output message of the app's output stream reaches the external system once, in order,
across kills and a crash between the FileSink's append and its commit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from connector_support import app_streams, async_, cancel, eventually, publish_outputs, stored

from conftest import BUCKET, REGION, Moto
from wallaroo.connectors import FileSink, HttpSink, NatsSink, S3Sink
from wallaroo.local.natsserver import NatsServer, free_port
from wallaroo.nats import MSG_ID, Nats
from wallaroo_runtime.connectors import SinkStats, run_sink, sidecar, sinks
from wallaroo_runtime.connectors.framing import content, s3_object_key
from wallaroo_runtime.connectors.sinks import FileDelivery, OutputMsg
from wallaroo_runtime.statestore import S3Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
SLUG = "sink_app"


def outputs(first: int, last: int) -> list[list[bytes | str]]:
    """One output message per n: str outputs as a str encoder gives, bytes with newlines."""
    return [[f"m{n}a", f"m{n}b\n".encode()] for n in range(first, last)]


def lines_of(first: int, last: int) -> list[str]:
    return [line for n in range(first, last) for line in (f"m{n}a", f"m{n}b")]


def start(nats: Nats, name: str, cfg: Any, stop: asyncio.Event,
          stats: SinkStats | None = None) -> asyncio.Task[None]:
    return asyncio.create_task(run_sink(nats, SLUG, name, cfg, stop, stats))


def test_a_file_sink_writes_each_output_once_in_order(nats_server: NatsServer, tmp_path: Path) -> None:
    path = tmp_path / "out" / "counts.txt"
    cfg = FileSink("counts", str(path))

    def written() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            names = await app_streams(nats, SLUG)
            await publish_outputs(nats, SLUG, "counts", outputs(0, 6))
            stop = asyncio.Event()
            # 1. Killed once it delivered the 6 messages there are.
            task = start(nats, "counts", cfg, stop)
            # (its commit, not its lines: the lines are appended before the commit is written)
            await eventually(async_(lambda: getattr(sidecar.load(path), "seq", 0) == 6),
                             "6 messages written and committed")
            await cancel(task)
            await publish_outputs(nats, SLUG, "counts", outputs(6, 10), first_commit=7)
            # 2. A crash between the two steps of the next message: appended (and half of
            # another), commit not written.
            commit = sidecar.load(path)
            assert commit is not None
            stale = await stored(nats, names.out_stream, names.out("counts"))
            assert commit.seq == 6 and [m.seq for m in stale] == list(range(1, 11))
            sidecar.append(path, content([b"m6a", b"m6b"]))
            sidecar.append(path, b"half an out")
            # 3. Restarted: the uncommitted bytes are cut, delivery goes on from there.
            task = start(nats, "counts", cfg, stop)
            await publish_outputs(nats, SLUG, "counts", outputs(10, 15), first_commit=11)
            await eventually(async_(lambda: len(written()) >= 30), "all written")
            stop.set()
            await asyncio.wait_for(task, 5)
            assert written() == lines_of(0, 15)
            assert sidecar.load(path) == sidecar.FileCommit(path.stat().st_size, 15, {"s1.0": 15})
        finally:
            await nats.close()

    asyncio.run(body())


def test_the_file_sink_steps_skip_what_was_committed(nats_server: NatsServer, tmp_path: Path) -> None:
    """A redelivered message (at or below the commit) is acked without writing."""
    path = tmp_path / "out.txt"

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            names = await app_streams(nats, SLUG)
            delivery = FileDelivery(path)
            assert await delivery.open(nats, names, "sink_x") == 1
            msg = OutputMsg(1, "s1.0:1:0", [b"a"])
            assert not delivery.delivered(msg)
            await delivery.deliver(msg)
            assert delivery.delivered(msg) and delivery.delivered(OutputMsg(7, "s1.0:1:0", [b"a"]))
            reopened = FileDelivery(path)
            await publish_outputs(nats, SLUG, "x", outputs(0, 1))  # the stream reaches seq 1
            assert await reopened.open(nats, names, "sink_x") == 2
            assert path.read_bytes() == b"a\n"
        finally:
            await nats.close()

    asyncio.run(body())



# --- HTTP -------------------------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    """Records (Idempotency-Key, body, status) of every POST; answers 503 to the first try of
    keys in `fail_once` and 400 to keys in `refuse`."""

    posts: list[tuple[str, bytes, int]] = []
    fail_once: set[str] = set()
    refuse: set[str] = set()
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        key = self.headers.get("Idempotency-Key", "")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.lock:
            status = 400 if key in self.refuse else 503 if key in self.fail_once else 200
            self.fail_once.discard(key)
            self.posts.append((key, body, status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the test reads self.posts."""


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("Handler", (Recorder,), {"posts": [], "fail_once": set(), "refuse": set()})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


def test_http_sink_posts_each_message_with_its_idempotency_key(
        nats_server: NatsServer, http_server: tuple[str, type[Recorder]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, handler = http_server
    monkeypatch.setattr(sinks, "HTTP_BACKOFF", (0.01, 0.05))
    cfg = HttpSink("hook", url, timeout=5)

    def ok_keys() -> list[str]:
        return [k for k, _, status in handler.posts if status == 200]

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, SLUG)
            ids = await publish_outputs(nats, SLUG, "hook", outputs(0, 6))
            keys = [f"{SLUG}:{i}" for i in ids]
            handler.fail_once.add(keys[2])
            handler.refuse.add(keys[4])
            stop, stats = asyncio.Event(), SinkStats()
            task = start(nats, "hook", cfg, stop, stats)
            await eventually(async_(lambda: len(ok_keys()) == 5), "5 accepted posts")
            await cancel(task)  # restarted: nothing is posted again, new messages are
            task = start(nats, "hook", cfg, stop, stats)
            ids += await publish_outputs(nats, SLUG, "hook", outputs(6, 7), first_commit=7)
            keys.append(f"{SLUG}:{ids[-1]}")
            await eventually(async_(lambda: len(ok_keys()) == 6), "the new message posted")
            stop.set()
            await asyncio.wait_for(task, 5)

            assert ok_keys() == [k for k in keys if k != keys[4]]
            assert [(k, s) for k, _, s in handler.posts if k in (keys[2], keys[4])] == [
                (keys[2], 503), (keys[2], 200), (keys[4], 400)]
            assert handler.posts[0][1] == b"m0a\nm0b\n"
            assert (stats.delivered, stats.rejected) == (6, 1)
        finally:
            await nats.close()

    asyncio.run(body())


def test_http_sink_gives_up_after_bounded_retries_and_leaves_the_message(
        nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "HTTP_BACKOFF", (0.01, 0.02))
    cfg = HttpSink("hook", f"http://127.0.0.1:{free_port()}/nobody-listens", timeout=1)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            names = await app_streams(nats, SLUG)
            await publish_outputs(nats, SLUG, "hook", outputs(0, 1))
            with pytest.raises(sinks.SinkUnavailableError, match="failed 6 times"):
                await asyncio.wait_for(run_sink(nats, SLUG, "hook", cfg, asyncio.Event()), 20)
            assert await nats.consumer_ack_floor(names.out_stream, "sink_hook") == 0
        finally:
            await nats.close()

    asyncio.run(body())


# --- S3 ---------------------------------------------------------------------------------------


def test_s3_sink_writes_one_object_per_message_at_a_deterministic_key(
        nats_server: NatsServer, moto: Moto) -> None:
    cfg = S3Sink("archive", BUCKET, "runs/out", endpoint_url=moto.url)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        s3 = S3Store(BUCKET, "runs/out", endpoint_url=moto.url, region=REGION)
        try:
            await app_streams(nats, SLUG)
            ids = await publish_outputs(nats, SLUG, "archive", outputs(0, 4))
            stop = asyncio.Event()
            task = start(nats, "archive", cfg, stop)
            await eventually(lambda: _count(s3, 4), "4 objects")
            await cancel(task)
            ids += await publish_outputs(nats, SLUG, "archive", outputs(4, 6), first_commit=5)
            task = start(nats, "archive", cfg, stop)
            await eventually(lambda: _count(s3, 6), "6 objects")
            stop.set()
            await asyncio.wait_for(task, 5)

            keys = await s3.list("")
            assert keys == [s3_object_key(seq, i) for seq, i in enumerate(ids, start=1)]
            assert await s3.get(keys[5]) == b"m5a\nm5b\n"
        finally:
            await s3.close()
            await nats.close()

    asyncio.run(body())


async def _count(s3: S3Store, n: int) -> bool:
    return len(await s3.list("")) >= n


# --- NATS -------------------------------------------------------------------------------------


def test_nats_sink_publishes_each_message_once_with_its_msg_id(nats_server: NatsServer) -> None:
    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, SLUG)
            got: list[tuple[str, bytes]] = []

            async def on_msg(m: Any) -> None:
                got.append(((m.headers or {}).get(MSG_ID, ""), m.data))

            sub = await nats.nc.subscribe("ext.core", cb=on_msg)
            ids = await publish_outputs(nats, SLUG, "core", outputs(0, 5))
            stop = asyncio.Event()
            task = start(nats, "core", NatsSink("core", "ext.core"), stop)
            await eventually(async_(lambda: len(got) >= 3), "3 messages")
            await cancel(task)
            task = start(nats, "core", NatsSink("core", "ext.core"), stop)
            await eventually(async_(lambda: len(got) >= 5), "5 messages")
            # Stopped as abruptly as the first: what is checked is what reached the subject.
            await cancel(task)
            await sub.unsubscribe()
            assert got == [(f"{SLUG}:{i}", b"m%da\nm%db\n" % (n, n)) for n, i in enumerate(ids)]
        finally:
            await nats.close()

    asyncio.run(body())


def test_nats_sink_into_a_stream_is_acked_and_deduplicated(nats_server: NatsServer) -> None:
    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, SLUG)
            await nats.ensure_stream("EXT", ["ext.js"])
            ids = await publish_outputs(nats, SLUG, "js", outputs(0, 4))
            for _ in range(2):  # the second run re-sends from the start: all duplicates
                await nats.delete_consumer(f"WL_{SLUG.upper()}_OUT", "sink_js")
                stop = asyncio.Event()
                task = start(nats, "js", NatsSink("js", "ext.js"), stop)
                await eventually(lambda: _acked(nats, 4), "all acked")
                stop.set()
                await asyncio.wait_for(task, 5)
            msgs = await stored(nats, "EXT", "ext.js")
            assert [m.msg_id for m in msgs] == [f"{SLUG}:{i}" for i in ids]
        finally:
            await nats.close()

    asyncio.run(body())


async def _acked(nats: Nats, seq: int) -> bool:
    return await nats.consumer_ack_floor(f"WL_{SLUG.upper()}_OUT", "sink_js") == seq


def test_a_sink_whose_consumer_is_gone_resumes_at_the_kept_ack_floor(nats_server: NatsServer) -> None:
    """A rebuild deletes the sink's consumer first; if creating the new one then fails (a meta
    election), the sink must not start over from the stream's first output."""

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            names = await app_streams(nats, SLUG)
            await publish_outputs(nats, SLUG, "out", outputs(0, 5))
            durable = "sink_out"
            consumer = await nats.fresh_consumer(names.out_stream, durable, names.out("out"), 1)
            for m in (await consumer.fetch(3, 1.0))[:3]:
                await m.ack()

            async def acked_three() -> bool:
                return await nats.consumer_ack_floor(names.out_stream, durable) == 3

            await eventually(acked_three, "three acks at the server")
            await consumer.close()
            assert await sinks._resume_at_ack_floor(nats, names, durable) == 4
            await nats.delete_consumer(names.out_stream, durable)
            assert await sinks._resume_at_ack_floor(nats, names, durable) == 4
        finally:
            await nats.close()

    asyncio.run(body())
