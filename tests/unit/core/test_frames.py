"""Length-prefixed files (Wallaroo's `header_length`/`length_fmt`): split exactly into their
payloads, a truncated last frame is an error naming file, offset and lengths, and a decoder's
framing is checked when the decorator runs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import wallaroo as wl
from wallaroo.control import ingest
from wallaroo.core.frames import (
    Framing,
    FramingError,
    TruncatedFrameError,
    check_file,
    file_frames,
    looks_like_text,
)

FRAMING = Framing(4, ">I")
PAYLOADS = [b"", b"a", b"\x00\n\r\n" * 3, bytes(range(256)), b"last"]


def framed_file(tmp_path: Path, payloads: list[bytes], tail: bytes = b"") -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(b"".join(FRAMING.pack(p) for p in payloads) + tail)
    return path


def test_a_framed_file_splits_into_exactly_its_payloads_at_their_offsets(tmp_path: Path) -> None:
    path = framed_file(tmp_path, PAYLOADS)

    frames = list(file_frames(path, FRAMING))

    assert [p for _, p in frames] == PAYLOADS  # headers gone, newlines and NULs kept
    offsets = [0]
    for p in PAYLOADS[:-1]:
        offsets.append(offsets[-1] + 4 + len(p))
    assert [at for at, _ in frames] == offsets
    assert check_file(path, FRAMING) == len(PAYLOADS)


@pytest.mark.parametrize(("fmt", "size"), [(">H", 2), ("<Q", 8), ("B", 1)])
def test_other_header_formats_split_too(tmp_path: Path, fmt: str, size: int) -> None:
    framing = Framing(size, fmt)
    path = tmp_path / "f.bin"
    path.write_bytes(b"".join(framing.pack(p) for p in PAYLOADS[:3]))
    assert [p for _, p in file_frames(path, framing)] == PAYLOADS[:3]


def test_in_memory_frames_stop_at_an_incomplete_frame() -> None:
    data = FRAMING.pack(b"ab") + FRAMING.pack(b"cd") + FRAMING.pack(b"efg")[:5]
    frames, end = FRAMING.frames(data, 0)
    assert frames == [(0, b"ab"), (6, b"cd")] and end == 12
    assert FRAMING.frames(data, 0, max_records=1) == ([(0, b"ab")], 6)


def test_a_truncated_payload_names_file_offset_and_lengths(tmp_path: Path) -> None:
    path = framed_file(tmp_path, [b"abc"], tail=struct.pack(">I", 10) + b"12345")

    with pytest.raises(TruncatedFrameError) as err:
        check_file(path, FRAMING)

    assert (err.value.offset, err.value.expected, err.value.available) == (7, 14, 9)
    assert str(path) in str(err.value) and "byte 7" in str(err.value)
    assert "needs 14 byte(s)" in str(err.value) and "only 9 remain" in str(err.value)
    with pytest.raises(TruncatedFrameError, match="byte 7"):
        list(file_frames(path, FRAMING))


def test_a_truncated_header_is_an_error_too(tmp_path: Path) -> None:
    path = framed_file(tmp_path, [b"abc"], tail=b"\x00\x00")
    with pytest.raises(TruncatedFrameError, match=r"byte 7 is truncated: it needs 4 .* only 2"):
        check_file(path, FRAMING)


def test_send_of_a_truncated_binary_file_fails_before_reading_any_record(tmp_path: Path) -> None:
    path = framed_file(tmp_path, [b"abc"], tail=b"\x00\x00\x00\x09xy")
    with pytest.raises(TruncatedFrameError, match="byte 7"):
        ingest.file_records(path, FRAMING)  # raises on the call, not on iteration


def test_send_splits_by_the_decoders_framing_else_by_lines(tmp_path: Path) -> None:
    path = framed_file(tmp_path, PAYLOADS)
    assert list(ingest.file_records(path, FRAMING)) == PAYLOADS
    text = tmp_path / "t.txt"
    text.write_bytes(b"Amendment I\n\nCongress shall\r\n")
    assert list(ingest.file_records(text, None)) == [b"Amendment I", b"Congress shall"]
    # A text file for a framed decoder (Wallaroo's sender framed each of its lines): lines.
    assert list(ingest.file_records(text, FRAMING)) == [b"Amendment I", b"Congress shall"]


def test_text_is_told_from_frames() -> None:
    assert looks_like_text(b"Amendment I\nCongress")
    assert looks_like_text("caf\u00e9".encode()[:-1])  # a character cut by the probe's end
    assert not looks_like_text(FRAMING.pack(b"text"))  # the length's high bytes are NUL
    assert not looks_like_text(b"\xff\xfeabc")


def test_decoder_framing_is_validated_when_the_decorator_runs() -> None:
    with pytest.raises(FramingError, match=r"header_length=2 but length_fmt='>I' is 4 byte"):
        wl.decoder(header_length=2, length_fmt=">I")
    with pytest.raises(FramingError, match="together"):
        wl.decoder(header_length=4)
    with pytest.raises(FramingError, match="not a struct format"):
        wl.decoder(header_length=4, length_fmt="nope")
    with pytest.raises(FramingError, match="exactly one integer"):
        wl.decoder(header_length=8, length_fmt=">II")
    with pytest.raises(FramingError, match="exactly one integer"):
        wl.decoder(header_length=8, length_fmt=">d")
    with pytest.raises(FramingError, match="signed"):
        wl.decoder(header_length=4, length_fmt=">i")
    with pytest.raises(FramingError, match="must be an int"):
        wl.decoder(header_length="4", length_fmt=">I")  # type: ignore[arg-type]


def test_a_decoders_framing_reaches_the_manifest(tmp_path: Path) -> None:
    from wallaroo.core.packaging import build_artifact
    from wallaroo.core.wire import Manifest

    @wl.decoder(header_length=2, length_fmt=">H")
    def dec(b: bytes) -> bytes:
        return b

    pipeline = wl.source("in", wl.StreamSource(dec)).to_sink(wl.StreamSink("out"))
    _, manifest = build_artifact(wl.build_application("framed", pipeline), tmp_path / "app.py")
    read = Manifest.from_wire(manifest.to_wire())
    assert ingest.source_framing(read, "in") == Framing(2, ">H")
