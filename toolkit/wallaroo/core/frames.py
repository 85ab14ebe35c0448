"""Length-prefixed records, as Wallaroo's decoders declare them
(`@wallaroo.decoder(header_length=4, length_fmt=">I")`): a header of `header_length` bytes that
`struct` unpacks with `length_fmt` to the payload's length, then the payload. The decoder gets
the payload without its header, as Wallaroo did. Pure functions: no IO beyond a file handle.

    >>> f = Framing(4, ">I")
    >>> [(at, p) for at, p in f.frames(f.pack(b"ab") + f.pack(b"") + f.pack(b"c"), 0)[0]]
    [(0, b'ab'), (6, b''), (10, b'c')]
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wallaroo.core.errors import DefinitionError, WallarooError

TEXT_PROBE = 64 * 1024  # bytes of a file looked at to tell text from frames


class FramingError(DefinitionError, ValueError):
    """A decoder's header_length / length_fmt do not describe a length header."""


class TruncatedFrameError(WallarooError, ValueError):
    """A file ends inside a frame: its header or payload is cut short."""

    def __init__(self, where: str, offset: int, expected: int, available: int) -> None:
        self.where, self.offset = where, offset
        self.expected, self.available = expected, available
        super().__init__(
            f"{where}: the frame at byte {offset} is truncated: it needs {expected} byte(s) "
            f"(header and payload), only {available} remain. Nothing of it was sent: complete "
            "or cut off the last frame, or, for a text file, decode lines with a decoder "
            "without header_length")


@dataclass(frozen=True)
class Framing:
    """How records are framed: `header_length` bytes, unpacked by `length_fmt`."""

    header_length: int
    length_fmt: str

    def __post_init__(self) -> None:
        check_framing(self.header_length, self.length_fmt)

    def pack(self, payload: bytes) -> bytes:
        """`payload` with its header: how a sender frames a record."""
        return struct.pack(self.length_fmt, len(payload)) + payload

    def length_at(self, data: bytes, pos: int) -> int:
        (n,) = struct.unpack_from(self.length_fmt, data, pos)
        return int(n)

    def frames(self, data: bytes, pos: int, max_records: int | None = None
               ) -> tuple[list[tuple[int, bytes]], int]:
        """The whole frames of data[pos:] (at most `max_records`) as (offset, payload), and
        the offset just past the last one: where an incomplete frame starts, or len(data)."""
        out: list[tuple[int, bytes]] = []
        while max_records is None or len(out) < max_records:
            need = self.needed(data, pos)
            if need is None or pos + need > len(data):
                break
            out.append((pos, data[pos + self.header_length:pos + need]))
            pos += need
        return out, pos

    def needed(self, data: bytes, pos: int) -> int | None:
        """Bytes of the frame at `pos` (header and payload); None if its header is cut short."""
        if len(data) - pos < self.header_length:
            return None
        return self.header_length + self.length_at(data, pos)


def check_framing(header_length: object, length_fmt: object) -> None:
    """Raise FramingError unless `length_fmt` unpacks one non-negative integer from exactly
    `header_length` bytes."""
    fix = "e.g. @wallaroo.decoder(header_length=4, length_fmt=\">I\") for a 4-byte big-endian length"
    if not isinstance(length_fmt, str) or not isinstance(header_length, int) or isinstance(
            header_length, bool):
        msg = (f"decoder framing: header_length must be an int and length_fmt a struct format, "
               f"got header_length={header_length!r}, length_fmt={length_fmt!r}; {fix}")
        raise FramingError(msg)
    try:
        size = struct.calcsize(length_fmt)
        values = struct.unpack(length_fmt, bytes(size))
    except struct.error as err:
        msg = f"decoder framing: length_fmt={length_fmt!r} is not a struct format ({err}); {fix}"
        raise FramingError(msg) from err
    if len(values) != 1 or not isinstance(values[0], int) or isinstance(values[0], bool):
        msg = (f"decoder framing: length_fmt={length_fmt!r} must unpack exactly one integer "
               f"(the length), it unpacks {values!r}; {fix}")
        raise FramingError(msg)
    if struct.unpack(length_fmt, b"\xff" * size)[0] < 0:
        msg = (f"decoder framing: length_fmt={length_fmt!r} is signed; a length is never "
               f"negative, use its unsigned letter (B, H, I, L, Q); {fix}")
        raise FramingError(msg)
    if size != header_length:
        msg = (f"decoder framing: header_length={header_length} but length_fmt={length_fmt!r} "
               f"is {size} byte(s) (struct.calcsize); make them agree, {fix}")
        raise FramingError(msg)


def framing_of(header_length: int | None, length_fmt: str | None) -> Framing | None:
    """The Framing a decoder declares, None when it declares none (records are lines)."""
    if header_length is None and length_fmt is None:
        return None
    if header_length is None or length_fmt is None:
        msg = (f"decoder framing: give header_length and length_fmt together, got "
               f"header_length={header_length!r}, length_fmt={length_fmt!r}")
        raise FramingError(msg)
    return Framing(header_length, length_fmt)


def looks_like_text(prefix: bytes) -> bool:
    """Is this the start of a text file (no NUL byte, UTF-8)? A length header of a binary
    frame almost always holds a NUL (a 4-byte length under 16 MiB starts with one)."""
    if b"\0" in prefix:
        return False
    try:
        prefix.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(prefix) - 3  # a character cut by the end of the probe
    return True


def file_frames(path: Path, framing: Framing) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of every frame of the file. Raises TruncatedFrameError when the file
    ends inside a frame; call `check_file` first to fail before anything is used."""
    with open(path, "rb") as f:
        pos = 0
        while header := f.read(framing.header_length):
            need = _need(str(path), framing, header, pos)
            payload = f.read(need - framing.header_length)
            if len(payload) != need - framing.header_length:
                raise TruncatedFrameError(str(path), pos, need, len(header) + len(payload))
            yield pos, payload
            pos += need


def check_file(path: Path, framing: Framing) -> int:
    """How many frames the file holds, reading only their headers; TruncatedFrameError if it
    ends inside one. Why first: a send must not publish half a file and then fail."""
    size = path.stat().st_size
    count = pos = 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            need = _need(str(path), framing, f.read(framing.header_length), pos)
            if pos + need > size:
                raise TruncatedFrameError(str(path), pos, need, size - pos)
            pos += need
            count += 1
    return count


def _need(where: str, framing: Framing, header: bytes, pos: int) -> int:
    if len(header) < framing.header_length:
        raise TruncatedFrameError(where, pos, framing.header_length, len(header))
    return framing.header_length + framing.length_at(header, 0)


def is_text_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return looks_like_text(f.read(TEXT_PROBE))
