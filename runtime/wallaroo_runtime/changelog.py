"""Commit records: one per processed input batch, appended to the partition changelog.

A record holds everything needed to recover without re-running user code: the input
sequence range it covers, per-producer watermarks, the state slots it changed, and every
output it produced with its deterministic message id."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from wallaroo.natsio import Out

VERSION = 1


@dataclass(frozen=True)
class CommitRecord:
    commit_no: int
    first_seq: int
    last_seq: int
    watermarks: dict[str, int]
    states: dict[str, bytes]
    outs: list[Out]

    def encode(self) -> bytes:
        body = {
            "v": VERSION, "n": self.commit_no, "in": [self.first_seq, self.last_seq],
            "wm": self.watermarks, "st": self.states,
            "out": [[o.subject, o.msg_id, o.payload] for o in self.outs],
        }
        return bytes(msgpack.packb(body, use_bin_type=True))

    @classmethod
    def decode(cls, data: bytes) -> CommitRecord:
        d: dict[str, Any] = msgpack.unpackb(data, raw=False)
        if d.get("v") != VERSION:
            msg = f"changelog record format {d.get('v')!r} is not {VERSION}; upgrade the runner"
            raise ValueError(msg)
        return cls(
            commit_no=d["n"], first_seq=d["in"][0], last_seq=d["in"][1], watermarks=d["wm"],
            states=d["st"], outs=[Out(s, p, m) for s, m, p in d["out"]],
        )


@dataclass
class PartitionState:
    """What a partition owner knows after replaying its changelog."""

    table: dict[str, bytes] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)
    committed_seq: int = 0
    commit_no: int = 0
    last: CommitRecord | None = None

    def apply(self, rec: CommitRecord) -> None:
        self.table.update(rec.states)
        self.watermarks.update(rec.watermarks)
        self.committed_seq = max(self.committed_seq, rec.last_seq)
        self.commit_no = rec.commit_no
        self.last = rec

    @classmethod
    def replay(cls, records: Iterable[CommitRecord]) -> PartitionState:
        st = cls()
        for rec in records:
            st.apply(rec)
        return st
