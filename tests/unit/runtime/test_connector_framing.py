"""wallaroo_runtime.connectors.framing: lines become the same batches and ids every time
they are cut from the same bytes; sink keys and contents are functions of the message."""

from __future__ import annotations

import random

import pytest

from wallaroo_runtime.connectors.framing import (
    LineBatch,
    batches_in,
    content,
    external_id,
    file_source_id,
    is_replayed,
    lines_in,
    note_delivered,
    s3_object_key,
    s3_source_id,
    safe_token,
    source_msg_id,
    window_end,
)
from wallaroo_runtime.connectors.progress import SourceProgress, sink_durable, sink_key, source_key


def test_batches_carry_the_byte_offset_of_their_first_record() -> None:
    data = b"a\n\nbb\r\n\nccc\nd\n"
    batches = batches_in(data, 0, len(data), base=1000, size=2)
    assert [(b.offset, b.records) for b in batches] == [(1000, [b"a", b"bb"]), (1008, [b"ccc", b"d"])]


def test_a_window_takes_only_terminated_lines_unless_final() -> None:
    data = b"one\ntwo\nhalf"
    assert window_end(data, 0, 100, final=False) == 8
    assert window_end(data, 0, 100, final=True) == len(data)
    assert window_end(data, 8, 100, final=False) == 8  # nothing complete yet
    assert window_end(b"x\n\n\n\r", 0, 100, final=True) == 4  # empty lines go along, "\r" is none


def test_a_window_is_bounded_by_records_not_by_empty_lines() -> None:
    data = b"a\n\n\nb\nc\n"
    assert window_end(data, 0, 2, final=False) == 6  # a, two empty lines, b
    assert window_end(data, 6, 2, final=False) == len(data)


def slow_window_end(data: bytes, pos: int, max_records: int, *, final: bool) -> int:
    """The general rule, line by line: what the fast path for plain lines must agree with."""
    end, records = pos, 0
    while records < max_records:
        nl = data.find(b"\n", end)
        if nl < 0:
            return len(data) if final and data[end:].rstrip(b"\r") else end
        records += bool(data[end:nl].rstrip(b"\r"))
        end = nl + 1
    return end


def slow_batches(data: bytes, pos: int, end: int, base: int, size: int) -> list[LineBatch]:
    out: list[LineBatch] = []
    for at, record in lines_in(data, pos, end):
        if not out or len(out[-1].records) >= size:
            out.append(LineBatch(base + at, []))
        out[-1].records.append(record)
    return out


@pytest.mark.parametrize("alphabet", [b"ab\n", b"ab\n\n\r", b"abcdefgh\n"])
def test_plain_lines_take_a_fast_path_that_cuts_as_the_general_rule(alphabet: bytes) -> None:
    rng = random.Random(alphabet)
    for _ in range(400):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        pos = rng.randrange(0, len(data) + 1)
        n, final, size = rng.randrange(1, 6), rng.random() < 0.5, rng.randrange(1, 4)
        end = window_end(data, pos, n, final=final)
        assert end == slow_window_end(data, pos, n, final=final), (data, pos, n, final)
        assert batches_in(data, pos, end, base=7, size=size) == slow_batches(data, pos, end, 7, size)


def test_recutting_a_recorded_window_after_the_file_grew_gives_the_same_ids() -> None:
    """Why the window is recorded before publishing: cut anew from the longer file, the first
    batch would keep its id but gain records, and the stream would drop it as a duplicate."""
    before = b"1\n2\n3\n"
    after = before + b"4\n5\n"
    window = window_end(before, 0, 100, final=False)
    first = batches_in(before, 0, window, base=0, size=4)
    replayed = batches_in(after, 0, window, base=0, size=4)  # what a restart re-sends
    recut = batches_in(after, 0, window_end(after, 0, 100, final=False), base=0, size=4)
    assert replayed == first
    assert recut[0].offset == first[0].offset and recut[0].records != first[0].records


def test_source_ids_are_deterministic_and_distinct() -> None:
    assert file_source_id("lines", "/data/in.txt", 0) == file_source_id("lines", "/data/in.txt", 0)
    ids = {file_source_id("lines", "/data/in.txt", 0), file_source_id("lines", "/data/in.txt", 1),
           file_source_id("other", "/data/in.txt", 0), file_source_id("lines", "/data/in2.txt", 0),
           s3_source_id("lines", "b", "k"), s3_source_id("lines", "b", "k2")}
    assert len(ids) == 6
    sid = file_source_id("lines", "/data/in.txt", 0)
    assert source_msg_id(sid, 42) == f"i:{sid}:42" and sid.startswith("file-")


def test_s3_object_keys_sort_in_stream_order_and_are_plain_names() -> None:
    keys = [s3_object_key(seq, "s1.0:7:0") for seq in (9, 10, 100)]
    assert keys == sorted(keys)
    assert keys[0] == "000000000009-s1_0_7_0.out"
    assert s3_object_key(3, "") == "000000000003-none.out"
    assert safe_token("a b/é.c") == "a_b___c"


def test_content_is_one_output_per_line() -> None:
    assert content([b"a", b"b\n", b""]) == b"a\nb\n\n"
    assert content([]) == b""


def test_watermarks_recognise_a_partitions_re_published_output() -> None:
    marks = note_delivered("s1.0:5:0", {})
    assert marks == {"s1.0": 5}
    assert is_replayed("s1.0:5:0", marks) and is_replayed("s1.0:4:1", marks)
    assert not is_replayed("s1.0:6:0", marks) and not is_replayed("s1.1:1:0", marks)
    assert not is_replayed("custom-id", marks) and note_delivered("custom-id", marks) == marks
    assert note_delivered("s1.0:3:0", marks) == marks  # never goes back


def test_external_ids_and_names_are_qualified_by_app_and_connector() -> None:
    assert external_id("word_count", "s1.0:5:0") == "word_count:s1.0:5:0"
    assert source_key("app", "my lines") == "app.src.my_lines"
    assert sink_key("app", "out") == "app.sink.out"
    assert sink_durable("to s3") == "sink_to_s3"


def test_progress_round_trips_and_tracks_the_window_in_flight() -> None:
    p = SourceProgress(unit="in/a.txt", acked=10)
    planned = p.planned(50)
    assert planned.in_flight and not p.in_flight
    done = planned.published()
    assert (done.acked, done.upto, done.in_flight) == (50, 50, False)
    assert SourceProgress.from_json(planned.to_json()) == planned


def test_a_source_begun_before_tags_takes_them_from_its_next_window() -> None:
    """An endless source upgraded mid-window re-sends that window with the ids it had (so
    the stream drops what it holds), then tags every window after."""
    legacy = SourceProgress.from_json(b'{"acked": 100, "upto": 300}')
    assert legacy.in_flight and not legacy.tagged
    resent = legacy.planned(300)
    assert not resent.tagged
    assert resent.published().planned(500).tagged
