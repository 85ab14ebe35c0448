"""A message whose bytes do not decode (not msgpack, not a pickle, the wrong shape, a wire
format of another version) is dead-lettered whole, committed and acked: the partition keeps
flowing (DESIGN.md, "Security model"). The real PartitionWorker on MemoryNats."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
import pytest

import wallaroo as wl
from wallaroo.core import codec
from wallaroo.core.names import AppNames
from wallaroo.core.wire import MALFORMED, DeadLetter, ReplayBatch
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.nats.memory import MemoryNats
from wallaroo.plan import Application

CONFIG = WorkerConfig(fetch_timeout=0.0)
GARBAGE = random.Random(9).randbytes(64)


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return wrapper


@wl.computation(name="upper")
def upper(s: str) -> str:
    return s.upper()


@wl.key_extractor
def word(w: str) -> str:
    return w


class Total:
    def __init__(self) -> None:
        self.count = 0


@wl.state_computation(name="count", state=Total)
def count(w: str, total: Total) -> str:
    total.count += 1
    return f"{w} => {total.count}"


def uppercase() -> Application:
    return wl.build_application("one", wl.source("in", wl.StreamSource(decoder=bytes.decode))
                                .to(upper).to_sink(wl.StreamSink("out")))


def counting() -> Application:
    """Stage 1 is internal: its input is (keys, values) pickled by stage 0."""
    pipeline = (wl.source("words", wl.StreamSource(decoder=bytes.decode)).key_by(word).to(count)
                .to_sink(wl.StreamSink("counts")))
    return wl.build_application("counting", pipeline, partitions=1)


class Rig:
    """An app's streams on MemoryNats, one partition worker, what came out."""

    def __init__(self, app: Application, stage: int, max_payload: int) -> None:
        self.app, self.stage, self.names = app, stage, AppNames(app.slug)
        self.nats = MemoryNats(max_payload=max_payload)
        self.subject = self.names.input(stage, 0, app.stages[stage].source is not None)
        self.worker = self.new_worker()

    @classmethod
    async def create(cls, app: Application, stage: int = 0, max_payload: int = 1 << 20) -> Rig:
        rig = cls(app, stage, max_payload)
        for stream, (subjects, work_queue) in rig.names.streams().items():
            await rig.nats.ensure_stream(stream, subjects, work_queue=work_queue)
        return rig

    def new_worker(self) -> PartitionWorker:
        return PartitionWorker(self.nats, self.app, "v1", self.app.stages[self.stage], 0, CONFIG)

    async def send(self, payload: bytes, msg_id: str) -> int:
        return await self.nats.publish(self.subject, payload, msg_id)

    async def run(self) -> None:
        """Restore, then poll until nothing waits (a message that stalled would fail here)."""
        await self.worker.restore()
        consumer = await self.worker.open_consumer()
        for _ in range(10):
            if not self.nats.count(self.names.data_stream, self.subject):
                return
            consumer = await self.worker.poll(consumer)
        raise AssertionError("the partition stalled")

    def outputs(self) -> list[str]:
        return [r.decode() for m in self.nats.messages(self.names.out_stream)
                for r in codec.unpack_batch(m.data)]

    def dead(self) -> list[DeadLetter]:
        return [DeadLetter.from_wire(m.data) for m in self.nats.messages(self.names.dlq_stream)]


def assert_dead_lettered_whole(rig: Rig, payload: bytes, seq: int) -> DeadLetter:
    [letter] = rig.dead()
    assert (letter.reason, letter.step, letter.key) == (MALFORMED, "decode", None)
    assert (letter.payload, letter.subject, letter.rid) == (payload, rig.subject, (seq, 0))
    assert (letter.app, letter.stage_index, letter.partition) == (rig.app.name, rig.stage, 0)
    assert letter.error and not letter.replayable
    return letter


# --- a source stage: msgpack record batches -----------------------------------------------------

@pytest.mark.parametrize("bad", [
    GARBAGE,
    codec.pack_batch([b"abc", b"def"])[:-2],  # truncated
    msgpack.packb(7),  # msgpack, but no list
    msgpack.packb([1, 2]),  # a list, but of no records
    msgpack.packb({"a": b"b"}),
    b"",
], ids=["random bytes", "truncated msgpack", "an int", "a list of ints", "a map", "empty"])
@sync
async def test_a_source_message_that_is_no_record_batch_is_dead_lettered_whole(bad: bytes) -> None:
    rig = await Rig.create(uppercase())
    await rig.send(codec.pack_batch([b"first"]), "i:t:1")
    seq = await rig.send(bad, "i:t:2")
    await rig.send(codec.pack_batch([b"after", "it"]), "i:t:3")

    await rig.run()

    assert rig.outputs() == ["FIRST", "AFTER", "IT"]  # before and after it, in one fetch
    letter = assert_dead_lettered_whole(rig, bad, seq)
    assert letter.stage == "in"
    assert (rig.worker.progress.malformed, rig.worker.progress.dead) == (1, 1)


@sync
async def test_a_fetch_of_nothing_but_malformed_messages_commits_and_acks_them() -> None:
    rig = await Rig.create(uppercase())
    seqs = [await rig.send(GARBAGE[:n], f"i:t:{n}") for n in (10, 20, 30)]

    await rig.run()

    assert [d.rid[0] for d in rig.dead()] == seqs
    assert rig.worker.state.committed_seq == seqs[-1]
    await rig.send(codec.pack_batch([b"good"]), "i:t:good")
    await rig.run()
    assert rig.outputs() == ["GOOD"]


@sync
async def test_a_malformed_message_is_dead_lettered_exactly_once_across_a_crash() -> None:
    rig = await Rig.create(uppercase())
    rig.nats.drop_next_ack(rig.subject)  # committed and published, but the ack is lost
    seq = await rig.send(GARBAGE, "i:t:1")
    await rig.worker.restore()
    await rig.worker.poll(await rig.worker.open_consumer())
    assert rig.nats.count(rig.names.data_stream, rig.subject) == 1  # still there

    rig.worker = rig.new_worker()  # the next owner, or this one restarted
    await rig.run()

    assert_dead_lettered_whole(rig, GARBAGE, seq)
    assert rig.nats.count(rig.names.data_stream, rig.subject) == 0


@sync
async def test_a_message_too_big_for_its_letter_is_cut_to_fit_not_stalled() -> None:
    rig = await Rig.create(uppercase(), max_payload=64 * 1024)
    big = random.Random(1).randbytes(64 * 1024 - 100)
    await rig.send(big, "i:t:1")
    await rig.send(codec.pack_batch([b"next"]), "i:t:2")

    await rig.run()

    [letter] = rig.dead()
    assert letter.reason == MALFORMED and big.startswith(letter.payload)
    assert "cut to" in letter.error
    assert rig.outputs() == ["NEXT"]


# --- an internal stage: (keys, values) pickled by the upstream stage ----------------------------

@pytest.mark.parametrize("bad", [
    b"cno_such_module\nThing\n.",  # a pickle of a class this runner cannot import
    codec.dumps((["a"], ["a"]))[:-3],  # truncated
    codec.dumps("ab"),  # a pickle of the wrong shape (a str of two is no (keys, values))
    codec.dumps((["a", "b"], ["a"])),
    GARBAGE,
    codec.dumps_columns(["a"], ["a"])[:-1],  # msgpack columns, truncated
    codec.COLUMNS_TAG + msgpack.packb(["a", "b", "c"]),  # msgpack columns of the wrong shape
    codec.COLUMNS_TAG + msgpack.packb([["a", "b"], ["a"]]),
], ids=["unimportable", "truncated", "a str", "keys and values of two lengths", "random bytes",
        "msgpack truncated", "msgpack of three", "msgpack of two lengths"])
@sync
async def test_an_internal_message_that_does_not_unpickle_to_a_batch_is_dead_lettered(bad: bytes) -> None:
    rig = await Rig.create(counting(), stage=1)
    seq = await rig.send(bad, "s0.0:1:0")
    await rig.send(codec.dumps((["a"], ["a"])), "s0.0:2:0")

    await rig.run()

    assert rig.outputs() == ["a => 1"]
    assert assert_dead_lettered_whole(rig, bad, seq).stage == "count"


@pytest.mark.parametrize("bad", [
    msgpack.packb([2, ["a"], [codec.dumps("a")]]),  # a replay format of a later version
    ReplayBatch(["a"], [b"not a pickle"]).to_wire(),
    msgpack.packb([1, ["a"]]),
    GARBAGE,
], ids=["unknown version", "a value that does not unpickle", "no values", "random bytes"])
@sync
async def test_a_replayed_letter_that_does_not_decode_is_dead_lettered_again(bad: bytes) -> None:
    rig = await Rig.create(counting(), stage=1)
    seq = await rig.send(bad, "r:counting:5")
    await rig.send(ReplayBatch(["a"], [codec.dumps("a")]).to_wire(), "r:counting:6")

    await rig.run()

    assert rig.outputs() == ["a => 1"]
    assert_dead_lettered_whole(rig, bad, seq)
