"""wallaroo_runtime.connectors.framing with a decoder's framing: windows end after whole
frames, batches carry the offset of their first frame, and text still splits by lines."""

from __future__ import annotations

from wallaroo.core.frames import Framing
from wallaroo_runtime.connectors.framing import batches_in, frames_window_end, split_of

FRAMING = Framing(2, ">H")
RECORDS = [b"a\nb", b"", b"\x00\x00", b"ccc", b"d"]
DATA = b"".join(FRAMING.pack(r) for r in RECORDS)  # frames at 0, 5, 7, 11, 16; 19 bytes


def test_frame_batches_carry_the_offset_of_their_first_frame() -> None:
    batches = batches_in(DATA, 0, len(DATA), base=1000, size=2, framing=FRAMING)
    assert [(b.offset, b.records) for b in batches] == [
        (1000, [b"a\nb", b""]), (1007, [b"\x00\x00", b"ccc"]), (1016, [b"d"])]
    assert batches_in(DATA, 7, 16, base=0, size=8, framing=FRAMING)[0].records == [
        b"\x00\x00", b"ccc"]


def test_a_frame_window_ends_after_whole_frames_only() -> None:
    assert frames_window_end(DATA, 0, 100, FRAMING) == len(DATA)
    assert frames_window_end(DATA, 0, 2, FRAMING) == 7
    assert frames_window_end(DATA[:15], 0, 100, FRAMING) == 11  # "ccc" is cut: it waits
    assert frames_window_end(DATA[:12], 11, 100, FRAMING) == 11  # a cut header too


def test_text_splits_by_lines_binary_by_frames() -> None:
    assert split_of(FRAMING, DATA) == FRAMING
    assert split_of(FRAMING, b"Amendment I\nCongress") is None
    assert split_of(None, DATA) is None  # no framing declared: lines
