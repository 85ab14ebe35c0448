"""A sender bounded by a Backlog, in pure logic: ingest.wait_for_room with a fake count, clock
and sleep, so that what it waits for and when it gives up are exact; ingest.send over a fake
server (a look before every window); dev's default bound (input_backlog)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from wallaroo.control import ingest
from wallaroo.core.errors import BacklogStalledError
from wallaroo.core.wire import Manifest, StageInfo
from wallaroo.local.devsession import input_backlog
from wallaroo.nats import Nats, Out


class Source:
    """A source's unprocessed count as the app takes it: `counts` in turn, one per look
    (the last repeats); the clock moves only by the sender's sleeps."""

    def __init__(self, *counts: int) -> None:
        self.counts, self.looks, self.now, self.slept = list(counts), 0, 0.0, 0.0

    async def count(self) -> int:
        self.looks += 1
        return self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def wait(src: Source, n: int, limit: int, stall: float = 10.0) -> Callable[[], Awaitable[bool]]:
    return lambda: ingest.wait_for_room(src.count, n, ingest.Backlog(limit, stall),
                                        clock=src.clock, sleep=src.sleep)


def test_a_window_that_fits_goes_at_once() -> None:
    src = Source(3)
    assert asyncio.run(wait(src, n=5, limit=8)())
    assert (src.looks, src.slept) == (1, 0.0)


def test_a_full_backlog_holds_the_window_until_the_app_takes_enough() -> None:
    src = Source(8, 8, 6, 4, 2)  # room for 5 under 8 once 3 or fewer wait
    asyncio.run(wait(src, n=5, limit=8)())
    assert src.looks == 5 and src.slept > 0


def test_a_window_larger_than_the_limit_waits_for_an_empty_backlog() -> None:
    src = Source(2, 1, 0)
    asyncio.run(wait(src, n=64, limit=4)())
    assert src.looks == 3


def test_pauses_grow_to_the_longest_and_no_further() -> None:
    src = Source(*([9] * 12), 0)
    asyncio.run(wait(src, n=1, limit=8, stall=1e9)())
    first, longest = ingest.ROOM_POLL
    pauses = [min(first * 2 ** i, longest) for i in range(12)]
    assert src.slept == pytest.approx(sum(pauses))


def test_a_backlog_nothing_takes_is_a_stall_once_its_time_is_up() -> None:
    src = Source(8)
    assert not asyncio.run(wait(src, n=1, limit=8, stall=2.0)())
    assert 2.0 <= src.now < 2.0 + ingest.ROOM_POLL[1] * 2


def test_a_backlog_other_senders_refill_as_the_app_takes_it_is_not_a_stall() -> None:
    src = Source(*[8, 7] * 40, 6)  # each fall, however soon refilled, is the app at work
    assert asyncio.run(wait(src, n=2, limit=8, stall=2.0)())
    assert src.now > 2.0


def test_a_backlog_that_falls_slowly_is_not_a_stall() -> None:
    # It falls by one each 0.1 s look or so: far longer than `stall` in all, never stalled.
    src = Source(*range(60, 6, -1))  # down to 7: room for 1 under 8
    assert asyncio.run(wait(src, n=1, limit=8, stall=0.5)())
    assert src.now > 0.5


@pytest.mark.parametrize(("limit", "stall"), [(0, 1.0), (4, 0.0), (4, float("nan"))])
def test_a_backlog_bound_must_be_positive(limit: int, stall: float) -> None:
    with pytest.raises(ValueError, match="must be above 0"):
        ingest.Backlog(limit, stall)


@pytest.mark.parametrize(("given", "autoscaled", "limit"), [
    (None, False, ingest.INPUT_BACKLOG), (None, True, None), (0, False, None), (0, True, None),
    (8, False, 8), (8, True, 8)])
def test_dev_input_is_bounded_unless_told_or_autoscaled(given: int | None, autoscaled: bool,
                                                        limit: int | None) -> None:
    backlog = input_backlog(given, autoscaled, stall=600.0)
    assert (backlog and backlog.limit) == limit
    assert backlog is None or backlog.stall == 600.0


class Server:
    """What send sees of nats-server: a source whose unprocessed count is `waiting` (the app
    takes nothing here), and each window published, with the count it was sent over."""

    max_payload = 1 << 20

    def __init__(self, waiting: int) -> None:
        self.waiting, self.windows = waiting, list[tuple[int, int]]()

    async def subject_count(self, stream: str, subject: str) -> int:
        assert subject.endswith(".in.0.*")  # every partition of the source stage
        return self.waiting

    async def publish_all(self, outs: list[Out]) -> set[str]:
        self.windows.append((self.waiting, len(outs)))
        self.waiting += len(outs)
        return set()


def send(server: Server, records: int, limit: int, stall: float = 0.05) -> ingest.Sent:
    manifest = Manifest("one", "one", "v1", "3.11", "3.1", 4,
                        [StageInfo(0, "lines", 4, "lines", None, ["out"])], ["out"], [], created=0.0)
    return asyncio.run(ingest.send(cast(Nats, server), manifest, "lines",
                                   [b"r%d" % i for i in range(records)], "p1", batch_size=1,
                                   backlog=ingest.Backlog(limit, stall)))


def test_send_looks_before_every_window_the_last_too_and_never_overfills() -> None:
    server = Server(waiting=0)
    with pytest.raises(BacklogStalledError):
        send(server, records=30, limit=12)  # the app takes nothing: 12 go, then it stops
    assert server.windows == [(0, 12)]
    server = Server(waiting=0)
    assert send(server, records=7, limit=12).records == 7  # one partial window: it looks first
    assert server.windows == [(0, 7)]


def test_the_stall_error_names_the_source_the_records_sent_and_the_producer() -> None:
    server = Server(waiting=9)
    with pytest.raises(BacklogStalledError, match=r"none of the 9 message\(s\) waiting in source "
                       r"'lines' .* after 0 record\(s\).* producer id p1 .* within 5 minutes"):
        send(server, records=5, limit=12)
