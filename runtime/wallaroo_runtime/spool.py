"""The commit records a partition holds for its next changelog segment, kept in an unnamed
temporary file instead of the runner's memory.

Why: a segment covers every commit since the snapshot before, outputs included, so each
partition held up to `CheckpointConfig.max_pending_bytes` of records; summed over its
partitions, that is what grew a runner from 1M to 10M words (peak RSS 1.24-1.33x), and a
smaller bound cost latency (segments twice as often). In a file they sit in the kernel's
page cache, outside the process, and are read back by the segment writer's thread (again
by the next attempt, when the store failed: a spool is kept until its segment is stored).
The file is unlinked from the start (tempfile.TemporaryFile): a runner killed with SIGKILL
leaves nothing behind. A partition holds a file only while it has records for a segment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import BinaryIO


class Spool:
    """Records in the order added, with their commit numbers."""

    def __init__(self) -> None:
        self.nos: list[int] = []
        self.bytes = 0
        self._sizes: list[int] = []
        self._file: BinaryIO | None = None

    def __len__(self) -> int:
        return len(self.nos)

    def add(self, record: bytes, no: int) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="wallaroo-segment-")
        self._file.write(record)  # buffered: a commit's record is one short copy
        self._sizes.append(len(record))
        self.nos.append(no)
        self.bytes += len(record)

    def read(self) -> list[bytes]:
        """The records added (the file stays until `discard`: the records of a segment that
        failed to store are read again by the next attempt). Blocking: the segment writer
        calls it in its thread."""
        if self._file is None:
            return []
        self._file.flush()
        self._file.seek(0)
        data = memoryview(self._file.read())
        self._file.seek(0, os.SEEK_END)  # (what is added after goes after)
        records, at = [], 0
        for size in self._sizes:
            records.append(bytes(data[at:at + size]))
            at += size
        return records

    @classmethod
    def joined(cls, spools: list[Spool]) -> Spool:
        """One spool of the records of `spools`, in order (their files copied, not decoded;
        they are left as they are). Blocking: call it in a thread. Why: each failed write
        gives back its spool, and an outage of hours must not cost a file per retry."""
        out = cls()
        for spool in spools:
            if spool._file is None:
                continue
            if out._file is None:
                out._file = tempfile.TemporaryFile(prefix="wallaroo-segment-")
            spool._file.flush()
            spool._file.seek(0)
            shutil.copyfileobj(spool._file, out._file)
            spool._file.seek(0, os.SEEK_END)
            out._sizes += spool._sizes
            out.nos += spool.nos
            out.bytes += spool.bytes
        return out

    def discard(self) -> None:
        """Let the records go (their file with them)."""
        if self._file is not None:
            self._file.close()
            self._file = None
