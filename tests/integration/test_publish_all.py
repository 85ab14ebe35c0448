"""Nats.publish_all on a real nats-server: every message stored once, whatever was already
stored under its id named back as a duplicate (the commit path's republish after a crash)."""

from __future__ import annotations

import asyncio
import signal

import pytest
from connector_support import async_, eventually

from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats, Out

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_publish_all_stores_each_id_once_and_names_the_duplicates(nats_server: NatsServer) -> None:
    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await nats.ensure_stream("OUT", ["out.>"])
            first = [Out(f"out.{i % 3}", f"{i}".encode(), f"id-{i}") for i in range(10)]
            assert await nats.publish_all(first) == set()
            again = first[4:] + [Out("out.0", b"new", "id-new")]
            assert await nats.publish_all(again) == {f"id-{i}" for i in range(4, 10)}
            assert await nats.publish_all([]) == set()
            assert await nats.stream_last_seq("OUT") == 11
        finally:
            await nats.close()

    asyncio.run(body())


def test_a_cancelled_round_forgets_its_acks(nats_server: NatsServer) -> None:
    """A worker stopped mid-publish cancels the round: its acks may never come (here the
    server is stopped with SIGSTOP), and each publish waiting for one would stay in the
    connection's table of acks for good."""
    assert nats_server.proc is not None
    proc = nats_server.proc

    async def body() -> None:
        nats = await Nats.connect(nats_server.url)
        try:
            await nats.ensure_stream("OUT", ["out.>"])
            proc.send_signal(signal.SIGSTOP)
            try:
                round_ = asyncio.create_task(nats.publish_all(
                    [Out("out.0", b"x", f"stuck-{i}") for i in range(20)]))
                await eventually(async_(lambda: nats.unacked == 20),
                                 "20 publishes sent, unacknowledged")
                round_.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await round_
                assert nats.unacked == 0
            finally:
                proc.send_signal(signal.SIGCONT)
        finally:
            await nats.close()

    asyncio.run(body())
