"""wallaroo.core.changelog: commit records round-trip and fold into partition state."""

import msgpack
import pytest

from wallaroo.core.changelog import PartitionState
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Out


def record(n: int, first: int, last: int, **states: bytes) -> CommitRecord:
    return CommitRecord(
        commit_no=n, first_seq=first, last_seq=last, watermarks={"s0.0": n},
        states=states, outs=[Out(f"wl.app.out.o{n}", f"payload{n}".encode(), f"s0.0:{n}:0")],
    )


def test_encode_decode_round_trip() -> None:
    rec = CommitRecord(
        commit_no=7, first_seq=10, last_seq=12, watermarks={"s0.1": 3, "s1.0": 9},
        states={"count\x1fhello": b"\x80\x05state", "count\x1f": b""},
        outs=[Out("wl.app.d.1.2", b"\x00bytes", "s0.1:7:0"), Out("wl.app.out.x", b"", "s0.1:7:1")],
    )

    assert CommitRecord.from_wire(rec.to_wire()) == rec


def test_replay_folds_tables_watermarks_and_sequences() -> None:
    st = PartitionState.replay([
        record(1, 1, 4, a=b"a1", b=b"b1"),
        record(2, 5, 5, a=b"a2"),
        record(3, 6, 9, c=b"c3"),
    ])

    assert st.table == {"a": b"a2", "b": b"b1", "c": b"c3"}
    assert st.watermarks == {"s0.0": 3}
    assert (st.committed_seq, st.commit_no) == (9, 3)
    assert st.last is not None and st.last.commit_no == 3


def test_committed_seq_never_goes_back() -> None:
    st = PartitionState.replay([record(1, 1, 9), record(2, 3, 4)])

    assert st.committed_seq == 9


def test_replay_of_nothing_is_empty() -> None:
    assert PartitionState.replay([]) == PartitionState()


def test_an_unknown_format_version_is_refused() -> None:
    body = msgpack.unpackb(record(1, 1, 1).to_wire(), raw=False)
    body["v"] = 99

    with pytest.raises(ValueError, match="format 99 is not 1"):
        CommitRecord.from_wire(msgpack.packb(body, use_bin_type=True))
