"""MemoryNats keeps the JetStream semantics the commit protocol relies on (see its docstring);
each test pins one of them, so a protocol test passing on it means something."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from wallaroo.core.errors import FencedError
from wallaroo.nats.memory import MaxPayloadError, MemoryNats, NoStreamError, subject_matches
from wallaroo.nats.protocol import Out
from wallaroo.testing import FakeClock

DATA, LOG = "DATA", "LOG"


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return wrapper


async def streams(
    dedup_window: float | None = None, max_payload: int = 1 << 20,
) -> tuple[MemoryNats, FakeClock]:
    clock = FakeClock()
    nats = MemoryNats(max_payload=max_payload, clock=clock.time)
    await nats.ensure_stream(DATA, ["d.>"], work_queue=True, dedup_window=dedup_window)
    await nats.ensure_stream(LOG, ["log.>"], dedup_window=dedup_window)
    return nats, clock


@pytest.mark.parametrize(("pattern", "subject", "match"), [
    ("d.>", "d.0.1", True), ("d.>", "d", False), ("d.*.1", "d.0.1", True),
    ("d.*", "d.0.1", False), ("d.0", "d.0", True), ("d.0", "d.1", False),
])
def test_subject_wildcards(pattern: str, subject: str, match: bool) -> None:
    assert subject_matches(pattern, subject) is match


@sync
async def test_a_streams_subjects_share_one_sequence() -> None:
    nats, _ = await streams()
    assert [await nats.publish(s, b"") for s in ("d.0.0", "d.0.1", "d.0.0")] == [1, 2, 3]
    assert await nats.publish("log.0.0", b"") == 1
    assert [m.seq for m in nats.messages(DATA, "d.0.0")] == [1, 3]
    with pytest.raises(NoStreamError, match="no stream captures subject 'elsewhere'"):
        await nats.publish("elsewhere", b"")


@sync
async def test_a_msg_id_is_stored_once_within_the_window_and_anew_after_it() -> None:
    nats, clock = await streams(dedup_window=10.0)
    first = await nats.publish("d.0.0", b"a", "id")
    consumer = await nats.fresh_consumer(DATA, "c", "d.0.0")
    [m] = await consumer.fetch(10, 0)
    await m.ack()  # gone from the work queue, but its id is remembered
    assert await nats.publish("d.0.0", b"a", "id") == first
    assert nats.count(DATA, "d.0.0") == 0
    clock.advance(10.0)
    assert await nats.publish("d.0.0", b"a", "id") == first + 1


@sync
async def test_publish_all_says_which_ids_the_stream_had_already() -> None:
    nats, _ = await streams()
    assert await nats.publish_all([Out("d.0.0", b"a", "x"), Out("d.0.0", b"b", "y")]) == set()
    assert await nats.publish_all([Out("d.0.0", b"a", "x"), Out("d.0.0", b"c", "z")]) == {"x"}
    assert nats.count(DATA, "d.0.0") == 3


@sync
async def test_deliveries_are_numbered_and_unacked_ones_come_back_after_ack_wait_first() -> None:
    nats, clock = await streams()
    for k in range(3):
        await nats.publish("d.0.0", bytes([k]), f"m{k}")
    consumer = await nats.fresh_consumer(DATA, "c", "d.0.0", ack_wait=5.0)
    a, b = await consumer.fetch(2, 0)
    assert [(m.stream_seq, m.consumer_seq, m.deliveries, m.pending) for m in (a, b)] == [
        (1, 1, 1, 2), (2, 2, 1, 1)]  # pending: not yet delivered
    await a.ack()
    assert await consumer.fetch(10, 0) != []  # seq 3; seq 2 is not due yet
    clock.advance(5.0)
    again = await consumer.fetch(10, 0)
    assert [(m.stream_seq, m.consumer_seq, m.deliveries) for m in again] == [(2, 4, 2), (3, 5, 2)]
    assert not await nats.msg_exists(DATA, 1) and await nats.msg_exists(DATA, 2)


@sync
async def test_a_fresh_consumer_replaces_the_old_one_and_starts_from_the_oldest_or_start_seq() -> None:
    nats, _ = await streams()
    for k in range(3):
        await nats.publish("d.0.0", bytes([k]))
    old = await nats.fresh_consumer(DATA, "c", "d.0.0")
    held = await old.fetch(10, 0)
    new = await nats.fresh_consumer(DATA, "c", "d.0.0")
    await held[0].ack()  # acks to a replaced consumer go nowhere
    assert [m.stream_seq for m in await new.fetch(10, 0)] == [1, 2, 3]
    later = await nats.fresh_consumer(DATA, "c", "d.0.0", start_seq=3)
    assert [(m.stream_seq, m.consumer_seq) for m in await later.fetch(10, 0)] == [(3, 1)]


@sync
async def test_lost_deliveries_leave_a_consumer_seq_gap_and_lost_acks_keep_the_message() -> None:
    nats, _ = await streams()
    for _ in range(3):
        await nats.publish("d.0.0", b"")
    nats.drop_next_delivery("d.0.0")
    nats.drop_next_ack("d.0.0")
    consumer = await nats.fresh_consumer(DATA, "c", "d.0.0")
    msgs = await consumer.fetch(10, 0)
    assert [(m.stream_seq, m.consumer_seq) for m in msgs] == [(2, 2), (3, 3)]
    for m in msgs:
        await m.ack()
    assert [m.seq for m in nats.messages(DATA)] == [1, 2]  # 1: never arrived; 2: ack lost


@sync
async def test_a_fenced_append_fails_unless_the_subject_is_where_the_writer_left_it() -> None:
    nats, _ = await streams()
    assert await nats.append_fenced(LOG, "log.0.0", b"1", "c1", 0) == 1
    await nats.publish("log.0.1", b"")  # other subjects do not move the fence
    assert await nats.append_fenced(LOG, "log.0.0", b"2", "c2", 1) == 3
    with pytest.raises(FencedError):
        await nats.append_fenced(LOG, "log.0.0", b"x", "zombie", 1)
    assert await nats.append_fenced(LOG, "log.0.0", b"2", "c2", 1) == 3  # a retried append is ours


@sync
async def test_a_failed_publish_stores_what_it_got_to() -> None:
    nats, _ = await streams()
    nats.fail_next_publish(stored=1)
    with pytest.raises(TimeoutError):
        await nats.publish_all([Out("d.0.0", b"a", "a"), Out("d.0.0", b"b", "b")])
    await nats.publish_all([Out("d.0.0", b"a", "a"), Out("d.0.0", b"b", "b")])  # the retry
    assert [m.data for m in nats.messages(DATA)] == [b"a", b"b"]


@sync
async def test_purge_below_a_seq_touches_one_subject() -> None:
    nats, _ = await streams()
    for s in ("d.0.0", "d.0.1", "d.0.0", "d.0.0"):
        await nats.publish(s, b"")
    await nats.purge_subject_below(DATA, "d.0.0", 4)
    assert [m.seq for m in nats.messages(DATA)] == [2, 4]


@sync
async def test_reading_a_subject_and_its_end() -> None:
    nats, _ = await streams()
    for s in ("log.0.0", "log.0.1", "log.0.0"):
        await nats.publish(s, s.encode())
    assert [m.seq async for m in nats.read_subject(LOG, "log.0.0", 3)] == [1, 3]
    assert [m.seq async for m in nats.read_subject(LOG, "log.>", 2)] == [1, 2]
    assert (await nats.last_on_subject(LOG, "log.0.1") or pytest.fail()).seq == 2
    with pytest.raises(TimeoutError, match="stopped at seq 3 of 5"):
        _ = [m async for m in nats.read_subject(LOG, "log.0.0", 5, complete=True)]


@sync
async def test_a_message_over_max_payload_is_refused() -> None:
    nats, _ = await streams(max_payload=10)
    with pytest.raises(MaxPayloadError) as err:
        await nats.publish("d.0.0", b"x" * 11)
    assert (err.value.size, err.value.max_payload) == (11, 10)


@sync
async def test_a_waiting_fetch_wakes_when_a_message_arrives() -> None:
    nats, _ = await streams()
    consumer = await nats.fresh_consumer(DATA, "c", "d.0.0")
    waiting = asyncio.create_task(consumer.fetch(1, timeout=30.0))
    await asyncio.sleep(0)  # let the fetch start waiting
    await nats.publish("d.0.0", b"late")
    [m] = await asyncio.wait_for(waiting, 5.0)
    assert m.data == b"late"
