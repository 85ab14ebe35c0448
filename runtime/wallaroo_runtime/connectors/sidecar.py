"""The FileSink's commit: how long its file is and which output it delivered last, kept in
a sidecar file `<path>.commit` next to it.

Delivering one output message is two steps, each durable before the next:
1. `append`: write its content at the end of the file, fsync;
2. `save`: write the new commit (file length, stream seq, partition watermarks) to a temp
   file, fsync, rename over the sidecar, fsync the directory.
A crash between them leaves bytes past the recorded length: `recover` cuts them off, and the
message is delivered again. A crash after 2 only repeats the ack: the message's seq is at or
below the commit's, so it is skipped. Hence never a double write and never a loss."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wallaroo_runtime.connectors.framing import is_replayed, note_delivered
from wallaroo_runtime.durable import write_atomic

log = logging.getLogger("wallaroo.connectors")
SUFFIX = ".commit"


@dataclass(frozen=True)
class FileCommit:
    offset: int = 0  # the file's committed length: every byte below it is a delivered output
    seq: int = 0  # the output stream sequence delivered last
    watermarks: dict[str, int] = field(default_factory=dict)  # partition -> last commit number

    def delivered(self, seq: int, msg_id: str) -> bool:
        """Was this output message written already (a redelivery or a late re-publish)?"""
        return seq <= self.seq or is_replayed(msg_id, self.watermarks)

    def advance(self, offset: int, seq: int, msg_id: str) -> FileCommit:
        return FileCommit(offset, max(seq, self.seq), note_delivered(msg_id, self.watermarks))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> FileCommit:
        d = json.loads(raw)
        return cls(int(d["offset"]), int(d["seq"]), {str(k): int(v) for k, v in d["watermarks"].items()})


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def load(path: Path) -> FileCommit | None:
    """The recorded commit of the sink writing `path`, None if it never committed."""
    try:
        return FileCommit.from_json(sidecar_path(path).read_bytes())
    except FileNotFoundError:
        return None


def save(path: Path, commit: FileCommit) -> None:
    """Replace the sidecar atomically: a crash leaves the old commit or the new one."""
    write_atomic(sidecar_path(path), commit.to_json(), temp_prefix=".")


def append(path: Path, data: bytes) -> int:
    """Append `data` durably; the file's new length."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def recover(path: Path) -> FileCommit:
    """The commit to resume from, with the file cut back to it. Without a sidecar the file's
    current bytes are kept (the sink appends after them), that length is recorded at once,
    and every output is delivered."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    size = path.stat().st_size
    commit = load(path)
    if commit is None:
        # Record the starting length before the first append: a crash right after that
        # append must cut it back, as it does for every later one.
        commit = FileCommit(offset=size)
        save(path, commit)
        return commit
    if size > commit.offset:
        log.info("%s: cutting %d bytes of an append that was not committed", path, size - commit.offset)
        os.truncate(path, commit.offset)
    elif size < commit.offset:
        # Someone shortened the file: what was cut is gone; carry on at its end.
        log.warning("%s is %d bytes, its commit says %d: it was changed outside the sink",
                    path, size, commit.offset)
        commit = FileCommit(size, commit.seq, commit.watermarks)
    return commit
