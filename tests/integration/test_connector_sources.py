"""Connector sources on a real nats-server (and moto's S3 server): every line of a file or of
S3 objects enters the app's data stream exactly once, with ids `i:<source id>:<offset>`, even
when the source is killed mid-file or crashes between publishing a window and recording it,
and while the file keeps growing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from connector_support import app_streams, cancel, eventually

from conftest import BUCKET, REGION, Moto
from wallaroo.connectors import FileSource, S3Source
from wallaroo.core.names import EOI_PREFIX, ID_TAG_MARK, AppNames, eoi_msg_id, source_sender, untagged
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime.connectors import KvProgress, SourceProgress, run_source, sources
from wallaroo_runtime.connectors.progress import source_key
from wallaroo_runtime.statestore import S3Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
SLUG = "src_app"


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Many windows from a small file, so a source can be stopped in the middle of it."""
    monkeypatch.setattr(sources, "BATCH_RECORDS", 8)
    monkeypatch.setattr(sources, "WINDOW_RECORDS", 32)
    yield


class ScriptedProgress(KvProgress):
    """Progress in KV that stops the source at a chosen window: `crash_at` raises when the
    source would record that window as acknowledged (it is in the stream, the record still
    says in flight); `hang_at` records it, then hangs (for the test to kill the source)."""

    def __init__(self, nats: Nats, crash_at: int = 0, hang_at: int = 0) -> None:
        super().__init__(nats)
        self.windows, self.crash_at, self.hang_at = 0, crash_at, hang_at
        self.hanging = asyncio.Event()

    async def save(self, key: str, value: bytes) -> None:
        if SourceProgress.from_json(value).in_flight:
            await super().save(key, value)
            return
        self.windows += 1
        if self.windows == self.crash_at:
            raise ConnectionError("crash between the JetStream ack and the record")
        await super().save(key, value)
        if self.windows == self.hang_at:
            self.hanging.set()
            await asyncio.Event().wait()


def lines(first: int, last: int) -> list[bytes]:
    return [f"line {n:04d}".encode() for n in range(first, last)]


def write(path: Path, records: list[bytes], mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(b"".join(r + b"\n" for r in records))


async def ingested(nats: Nats) -> tuple[list[bytes], list[str]]:
    """Records and msg ids of every message in the data stream (a work queue: read with an
    explicit-ack consumer, as a partition would, without acking)."""
    names = AppNames(SLUG)
    consumer = await nats.fresh_consumer(names.data_stream, "check", [f"wl.{SLUG}.in.>", f"wl.{SLUG}.ctl.>"])
    msgs = []
    while batch := await consumer.fetch(256, 0.3):
        msgs.extend(batch)
    await consumer.close()
    msgs.sort(key=lambda m: m.stream_seq)
    # Ends of input travel on the control subjects, which only runners may write.
    assert all(m.subject.startswith(f"wl.{SLUG}.ctl.") == m.msg_id.startswith(EOI_PREFIX) for m in msgs)
    # An end-of-input message (a bounded source's last) carries no records.
    records = [r for m in msgs if not m.msg_id.startswith(EOI_PREFIX)
               for r in msgpack.unpackb(m.data, raw=False)]
    return records, [m.msg_id for m in msgs]


def batch_offsets(ids: list[str]) -> list[int]:
    """The byte offsets in batch ids `i:<source>:<offset>~<tag>`, sorted. Each must carry the
    tag (a client cannot predict it, so cannot claim a batch's id first and have it dropped)."""
    plain = [i.split(ID_TAG_MARK) for i in ids if not i.startswith(EOI_PREFIX)]
    assert all(len(p) == 2 and p[1] for p in plain), ids
    return sorted(int(p[0].rsplit(":", 1)[1]) for p in plain)


async def acked(nats: Nats, name: str) -> SourceProgress:
    raw = await KvProgress(nats).load(source_key(SLUG, name))
    return SourceProgress.from_json(raw) if raw else SourceProgress()


def start(nats: Nats, cfg: FileSource | S3Source, stop: asyncio.Event, store: KvProgress,
          name: str = "lines") -> asyncio.Task[None]:
    return asyncio.create_task(run_source(nats, SLUG, 0, 2, name, cfg, stop, store))


def test_a_file_is_ingested_once_across_a_kill_a_crash_and_growth(nats_server: NatsServer,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    write(path, lines(0, 196))  # 6 windows of 32 lines (4 batches of 8), then 4 lines
    cfg = FileSource(str(path), poll=0.02, settle=0.1)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, SLUG)
            stop = asyncio.Event()
            # 1. Killed mid-file (cancelled at whatever await it was in).
            hanging = ScriptedProgress(nats, hang_at=2)
            task = start(nats, cfg, stop, hanging)
            await asyncio.wait_for(hanging.hanging.wait(), 10)
            await cancel(task)
            assert (await acked(nats, "lines")).acked == 2 * 32 * 10  # two windows of 32 lines
            # 2. Restarted, it crashes after the acks of its 5th window, the short one at the
            # end of the file, before recording them. Then the file grows: that window cut
            # anew would keep its first id but hold more lines (which the stream would drop).
            crashing = start(nats, cfg, stop, ScriptedProgress(nats, crash_at=5))
            with pytest.raises(ConnectionError):
                await crashing
            in_flight = await acked(nats, "lines")
            assert (in_flight.acked, in_flight.upto) == (192 * 10, 196 * 10)
            write(path, lines(196, 260), "ab")
            # 3. Restarted for good; it also follows lines appended while it runs, and an
            # unterminated last line once the file has settled.
            task = start(nats, cfg, stop, KvProgress(nats))
            write(path, lines(260, 300), "ab")
            with open(path, "ab") as f:
                f.write(b"\n\nlast line without newline")
            size = path.stat().st_size
            await eventually(lambda: _done(nats, size), "the whole file published")
            stop.set()
            await asyncio.wait_for(task, 5)

            records, ids = await ingested(nats)
            assert Counter(records) == Counter([*lines(0, 300), b"last line without newline"])
            assert len(set(ids)) == len(ids) and all(i.startswith("i:file-") for i in ids)
        finally:
            await nats.close()

    asyncio.run(body())


async def _done(nats: Nats, size: int) -> bool:
    p = await acked(nats, "lines")
    return p.acked == size and not p.in_flight


def test_message_ids_are_the_byte_offsets_of_each_batch(nats_server: NatsServer, tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\n\nbb\n" + b"".join(b"%d\n" % n for n in range(10)))

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, SLUG)
            stop = asyncio.Event()
            task = start(nats, FileSource(str(path), poll=0.02), stop, KvProgress(nats))
            await eventually(lambda: _done(nats, path.stat().st_size), "file published")
            stop.set()
            await task
            _, ids = await ingested(nats)
            assert batch_offsets(ids) == [0, 18]  # batches of 8 records: a, (empty), bb, 0..5 | 6..9
        finally:
            await nats.close()

    asyncio.run(body())


def test_s3_objects_are_ingested_once_in_key_order(nats_server: NatsServer, moto: Moto) -> None:
    cfg = S3Source(BUCKET, "in/", endpoint_url=moto.url, poll=0.05)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        s3 = S3Store(BUCKET, "", endpoint_url=moto.url, region=REGION)
        try:
            await app_streams(nats, SLUG)
            await s3.put("in/2024-01.txt", b"\n".join(lines(0, 100)))  # no final newline
            await s3.put("in/2024-02.txt", b"\n".join(lines(100, 150)) + b"\n")
            await s3.put("other/x.txt", b"not under the prefix\n")
            stop = asyncio.Event()
            crashing = asyncio.create_task(run_source(nats, SLUG, 0, 1, "objs", cfg, stop,
                                                      ScriptedProgress(nats, crash_at=2)))
            with pytest.raises(ConnectionError):
                await crashing
            task = asyncio.create_task(run_source(nats, SLUG, 0, 1, "objs", cfg, stop, KvProgress(nats)))
            await s3.put("in/2024-03.txt", b"\n".join(lines(150, 170)) + b"\n")
            await eventually(lambda: _object_done(nats, "in/2024-03.txt"), "all objects read")
            stop.set()
            await asyncio.wait_for(task, 5)

            records, ids = await ingested(nats)
            assert records == lines(0, 170)  # one partition: stream order is key then line order
            assert len(set(ids)) == len(ids) and all(i.startswith("i:s3-") for i in ids)
        finally:
            await s3.close()
            await nats.close()

    asyncio.run(body())


async def _object_done(nats: Nats, key: str) -> bool:
    raw = await KvProgress(nats).load(source_key(SLUG, "objs"))
    p = SourceProgress.from_json(raw) if raw else SourceProgress()
    return p.unit == key and p.done


def test_a_glob_is_read_file_by_file_once_across_a_kill_and_then_ends(nats_server: NatsServer,
                                                                      tmp_path: Path) -> None:
    for i in range(3):
        write(tmp_path / f"part-{i}.txt", lines(100 * i, 100 * i + 70))  # 3 windows each
    cfg = FileSource(str(tmp_path / "part-*.txt"), bounded=True, poll=0.02)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, SLUG)
            stop = asyncio.Event()
            # Saves: the glob (1), the first file (2-4), done with it (5), the second file (6...)
            hanging = ScriptedProgress(nats, hang_at=6)
            task = start(nats, cfg, stop, hanging)
            await asyncio.wait_for(hanging.hanging.wait(), 10)
            await cancel(task)
            assert (await acked(nats, "lines")).unit == "1"
            write(tmp_path / "part-3.txt", lines(900, 910))  # after the start: not its input
            task = start(nats, cfg, stop, KvProgress(nats))
            await eventually(lambda: _ended(nats), "the glob read and ended")
            stop.set()
            await asyncio.wait_for(task, 5)
            records, ids = await ingested(nats)
            assert Counter(records) == Counter([r for i in range(3) for r in lines(100 * i, 100 * i + 70)])
            data_ids = [i for i in ids if not i.startswith("eoi:")]
            assert len(set(data_ids)) == len(data_ids)
            assert sorted(untagged(i) for i in ids if i.startswith("eoi:")) == [
                eoi_msg_id(source_sender("lines"), 0, p) for p in range(2)]
        finally:
            await nats.close()

    asyncio.run(body())


async def _ended(nats: Nats) -> bool:
    return (await acked(nats, "lines")).ended
