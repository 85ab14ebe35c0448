"""wallaroo.core.wire: every cross-process message round-trips through to_wire/from_wire, and
bytes that are not that message raise WireError, whatever is wrong with them."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from wallaroo.core.errors import WallarooError, WireError
from wallaroo.core.wire import (
    MALFORMED,
    AppReport,
    Assignment,
    CommitRecord,
    DeadLetter,
    Heartbeat,
    Holder,
    Manifest,
    PartitionReport,
    ReplayBatch,
    RunnersWish,
    SinkReport,
    StageInfo,
    parse_part_key,
    part_key,
)
from wallaroo.nats import Out

MANIFEST = Manifest(name="Word Count", slug="word_count", version="abc", python="3.11",
                    cloudpickle="3.1", partitions=4,
                    stages=[StageInfo(0, "lines", 1, "lines", 1, []),
                            StageInfo(1, "count", 4, None, None, ["out"])],
                    sinks=["out"], by_value_modules=["word_count"], created=1.5, signature="s")
BEAT = Heartbeat(
    id="r0", pid=12, host="h", started=1.0, ts=2.0, tick_failures=0,
    apps={"wc": AppReport("v1", 0, {(1, 3): PartitionReport(4, 40, 1, 1, 99, 10.5, 0.5, 2)},
                          {"files": SinkReport(True, 3, 0, 0, 7, 1)}, switching_to="v2",
                          errors={(1, 2): "worker failed 3 time(s), last: WireError: x"},
                          deploy_id="v1@1.5")},
    errors={"other": "v9: no"}, refused={"other": "v9@1.5"},
)
MESSAGES: list[Any] = [
    MANIFEST,
    CommitRecord(7, 10, 12, {"s0.0": 3}, {"count\x1fa": b"\x80state"},
                 [Out("wl.wc.out.o", b"p", "s1.0:7:0")]),
    DeadLetter("count", "count", "user_error", "ValueError: x", "tb", 3, "a", b"rec", (10, 2),
               "wc", "v1", 3.0, 1, 2),
    DeadLetter("count", "decode", MALFORMED, "ExtraData: x", "tb", 1, None, b"\xc1junk", (10, 0),
               "wc", "v1", 3.0, 1, 2, subject="wl.wc.d.1.2"),
    ReplayBatch(["a", None], [b"x", b"y"]),
    BEAT,
    Assignment({(0, 0): "r0", (1, 3): "r1"}),
    Holder("r1"),
    RunnersWish(3),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Any) -> None:
    assert type(message).from_wire(message.to_wire()) == message


GARBAGE = [b"", b"\xff\xfe\x00", b"[1, 2", b"null", b"\x93\x01\x02"]


@pytest.mark.parametrize(("kind", "garbage"), [
    (type(m), g) for m in MESSAGES for g in GARBAGE
    if not (isinstance(m, Holder) and g in (b"[1, 2", b"null"))  # any UTF-8 text names a runner
])
def test_garbage_is_a_wire_error_naming_the_message(kind: Any, garbage: bytes) -> None:
    with pytest.raises(WireError) as err:
        kind.from_wire(garbage)
    assert isinstance(err.value, WallarooError) and isinstance(err.value, ValueError)
    assert str(err.value).startswith("malformed ")


def test_a_missing_field_is_a_wire_error() -> None:
    body = json.loads(BEAT.to_wire())
    del body["apps"]["wc"]["partitions"]["1.3"]["msg_rate"]
    with pytest.raises(WireError, match="malformed heartbeat"):
        Heartbeat.from_wire(json.dumps(body).encode())


def test_a_field_of_the_wrong_type_is_a_wire_error() -> None:
    body = msgpack.unpackb(MESSAGES[1].to_wire(), raw=False)
    body["st"] = ["not", "a", "map"]
    with pytest.raises(WireError, match="malformed commit record"):
        CommitRecord.from_wire(msgpack.packb(body, use_bin_type=True))


def test_a_commit_record_of_another_format_names_the_fix() -> None:
    body = msgpack.unpackb(MESSAGES[1].to_wire(), raw=False)
    body["v"] = 99
    with pytest.raises(WireError, match="upgrade the runner"):
        CommitRecord.from_wire(msgpack.packb(body, use_bin_type=True))


def test_replayed_keys_and_values_must_pair_up() -> None:
    with pytest.raises(WireError, match="2 keys for 1 values"):
        ReplayBatch.from_wire(msgpack.packb([["a", "b"], [b"x"]], use_bin_type=True))


def test_a_negative_runner_wish_is_refused() -> None:
    with pytest.raises(WireError, match="negative"):
        RunnersWish.from_wire(b"-2")


def test_a_dead_letter_read_back_carries_its_stream_seq() -> None:
    letter = MESSAGES[2]
    assert DeadLetter.from_wire(letter.to_wire(), seq=41).seq == 41


def test_partition_keys_have_one_spelling() -> None:
    assert part_key((2, 11)) == "2.11"
    assert parse_part_key("2.11") == (2, 11)
    assert json.loads(Assignment({(2, 11): "r"}).to_wire()) == {"2.11": "r"}


def test_replayed_letters_of_another_format_name_the_fix() -> None:
    with pytest.raises(WireError, match="replay format 2 is not 1; upgrade the runner"):
        ReplayBatch.from_wire(msgpack.packb([2, ["a"], [b"x"]], use_bin_type=True))


def test_replayed_letters_written_before_the_format_number_still_read() -> None:
    legacy = msgpack.packb([["a"], [b"x"]], use_bin_type=True)
    assert ReplayBatch.from_wire(legacy) == ReplayBatch(["a"], [b"x"])


def test_a_record_letter_is_written_without_a_subject_and_read_with_one_or_without() -> None:
    record = MESSAGES[2]
    assert "subject" not in msgpack.unpackb(record.to_wire(), raw=False)  # older readers read it
    newer = msgpack.unpackb(MESSAGES[3].to_wire(), raw=False) | {"added_later": 1}
    assert DeadLetter.from_wire(msgpack.packb(newer, use_bin_type=True)) == MESSAGES[3]


def test_malformed_messages_and_letters_of_no_stage_are_not_replayable() -> None:
    assert MESSAGES[2].replayable
    assert not MESSAGES[3].replayable  # malformed: its stage would refuse it again
    assert not DeadLetter("function f", "decode", "user_error", "e", "", 1, None, b"", (1, 0)).replayable


def test_a_heartbeat_from_before_malformed_counts_and_worker_errors_still_reads() -> None:
    body = json.loads(BEAT.to_wire())
    del body["apps"]["wc"]["partitions"]["1.3"]["malformed"]
    del body["apps"]["wc"]["errors"]
    app = Heartbeat.from_wire(json.dumps(body).encode()).apps["wc"]
    assert (app.partitions[(1, 3)].malformed, app.errors) == (0, {})
