"""Connector sources split a file (or S3 object) by its decoder's framing (Wallaroo's
`header_length`/`length_fmt`): every payload enters the data stream once, its id the byte
offset of its batch's first frame, across a crash and a frame written in two halves; a
bounded file cut inside a frame is an error naming it; a text file still splits by lines."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from connector_support import app_streams, async_, eventually
from test_connector_sources import (  # noqa: F401 - small_windows is an autouse fixture
    ScriptedProgress,
    _done,
    _object_done,
    batch_offsets,
    ingested,
    small_windows,
    start,
)

import wallaroo as wl
from conftest import BUCKET, REGION, Moto
from wallaroo.connectors import FileSource, S3Source
from wallaroo.core.frames import Framing, TruncatedFrameError
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats
from wallaroo_runtime.connectors import KvProgress, run_source
from wallaroo_runtime.statestore import S3Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
FRAMING = Framing(4, ">I")


@wl.decoder(header_length=4, length_fmt=">I")
def floats(bs: bytes) -> float:
    return float(struct.unpack(">d", bs)[0])


def payloads(first: int, last: int) -> list[bytes]:
    # Packed floats hold newlines and NULs: a line split would cut them apart.
    return [struct.pack(">d", n + 10 / 3) if n % 3 else b"\n" * n for n in range(first, last)]


def framed(records: list[bytes]) -> bytes:
    return b"".join(FRAMING.pack(r) for r in records)


def test_a_framed_file_is_ingested_frame_by_frame_once_across_a_crash(
        nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "in.bin"
    first = framed(payloads(0, 100))
    rest = framed(payloads(100, 150))
    path.write_bytes(first + rest[:7])  # the file ends inside a frame: it waits for the rest
    cfg = FileSource(str(path), decoder=floats, poll=0.02, settle=0.1)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, "src_app")
            stop = asyncio.Event()
            with pytest.raises(ConnectionError):  # after its 2nd window, before recording it
                await start(nats, cfg, stop, ScriptedProgress(nats, crash_at=2))
            task = start(nats, cfg, stop, KvProgress(nats))
            await eventually(lambda: _done(nats, len(first)), "the whole frames published")
            # The file settled inside a frame: a followed file may grow, so it warns and waits.
            await eventually(async_(lambda: "is truncated" in caplog.text), "a cut frame warned")
            assert not task.done()
            with open(path, "ab") as f:
                f.write(rest[7:])
            await eventually(lambda: _done(nats, len(first) + len(rest)), "the rest published")
            stop.set()
            await asyncio.wait_for(task, 5)
            records, ids = await ingested(nats)
        finally:
            await nats.close()
        assert sorted(records) == sorted(payloads(0, 150))  # each payload once, no header
        offsets = batch_offsets(ids)
        frame_starts = [at for at, _ in FRAMING.frames(first + rest, 0)[0]]
        # Windows of 32 frames (the 4th stopped by the half frame), batches of 8 frames in
        # each; a batch's id is the byte offset of its first frame.
        windows = [(0, 32), (32, 64), (64, 96), (96, 100), (100, 132), (132, 150)]
        assert offsets == [frame_starts[i] for s, e in windows for i in range(s, e, 8)]

    asyncio.run(body())


def test_a_bounded_file_cut_inside_a_frame_is_an_error_naming_it(
        nats_server: NatsServer, tmp_path: Path) -> None:
    path = tmp_path / "in.bin"
    whole = framed(payloads(0, 5))
    path.write_bytes(whole + struct.pack(">I", 100) + b"short")
    cfg = FileSource(str(path), decoder=floats, poll=0.02, bounded=True)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, "src_app")
            with pytest.raises(TruncatedFrameError) as err:
                await asyncio.wait_for(start(nats, cfg, asyncio.Event(), KvProgress(nats)), 10)
            records, _ = await ingested(nats)
        finally:
            await nats.close()
        assert (err.value.offset, err.value.expected, err.value.available) == (len(whole), 104, 9)
        assert str(path) in str(err.value)
        assert records == payloads(0, 5)  # the whole frames before it, nothing else

    asyncio.run(body())


def test_a_text_file_for_a_framed_decoder_still_splits_by_lines(
        nats_server: NatsServer, tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"Amendment I\n\nCongress shall make\n")
    cfg = FileSource(str(path), decoder=floats, poll=0.02, bounded=True)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await app_streams(nats, "src_app")
            stop = asyncio.Event()
            task = start(nats, cfg, stop, KvProgress(nats))
            await eventually(lambda: _done(nats, path.stat().st_size), "file published")
            stop.set()
            await asyncio.wait_for(task, 5)
            records, _ = await ingested(nats)
        finally:
            await nats.close()
        assert records == [b"Amendment I", b"Congress shall make"]

    asyncio.run(body())


def test_framed_s3_objects_are_split_by_frames(nats_server: NatsServer, moto: Moto) -> None:
    cfg = S3Source(BUCKET, "in/", decoder=floats, endpoint_url=moto.url, poll=0.05)

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        s3 = S3Store(BUCKET, "", endpoint_url=moto.url, region=REGION)
        try:
            await app_streams(nats, "src_app")
            await s3.put("in/1.bin", framed(payloads(0, 40)))
            await s3.put("in/2.bin", framed(payloads(40, 50)))
            stop = asyncio.Event()
            task = asyncio.create_task(run_source(nats, "src_app", 0, 1, "objs", cfg, stop,
                                                  KvProgress(nats)))
            await eventually(lambda: _object_done(nats, "in/2.bin"), "all objects read")
            stop.set()
            await asyncio.wait_for(task, 5)
            records, _ = await ingested(nats)
        finally:
            await s3.close()
            await nats.close()
        assert records == payloads(0, 50)  # one partition: key order, then frame order

    asyncio.run(body())
