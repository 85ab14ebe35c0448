"""Nats.publish_all on a real nats-server: every message stored once, whatever was already
stored under its id named back as a duplicate (the commit path's republish after a crash)."""

from __future__ import annotations

import asyncio

import pytest

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
