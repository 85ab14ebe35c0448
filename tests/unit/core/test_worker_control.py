"""Which messages command a partition: a runner's control ids (`eoi:` end of input, `tick:`
micro-batch timer, `s<stage>.<part>:<commit>:<k>` producer watermarks) are obeyed only on a
subject clients cannot write (a source stage's control subject, a keyed stage's input). On a
source subject, which clients write, such a message is a record batch like any other. And what
runners publish to the data stream's runner-only subjects is tagged afresh, so a client cannot
take its id first. The real PartitionWorker on MemoryNats."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import wallaroo as wl
from wallaroo.core import codec
from wallaroo.core.names import (
    ENDED,
    TAG_MARK,
    AppNames,
    eoi_msg_id,
    eoi_sender,
    internal_msg_id,
    is_control_id,
    parse_internal,
    source_sender,
    tagged,
    tick_msg_id,
    untagged,
)
from wallaroo.core.wire import MALFORMED, DeadLetter
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.nats.memory import MemoryNats
from wallaroo.plan import Application

CONFIG = WorkerConfig(fetch_timeout=0.0)
END = eoi_msg_id(source_sender("in"), 0, 0)


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return wrapper


@wl.computation(name="upper")
def upper(s: str) -> str:
    return s.upper()


@wl.batch_computation(name="trios", max_size=3, max_wait=60.0)
def trios(words: list[str]) -> list[str]:
    return [",".join(words)]


@wl.key_extractor
def first(w: str) -> str:
    return w[0]


def uppercase() -> Application:
    return wl.build_application("one", wl.source("in", wl.StreamSource(decoder=bytes.decode))
                                .to(upper).to_sink(wl.StreamSink("out")))


def batching() -> Application:
    return wl.build_application("trio", wl.source("in", wl.StreamSource(decoder=bytes.decode))
                                .to(trios).to_sink(wl.StreamSink("out")), partitions=1)


def keyed() -> Application:
    return wl.build_application("keyed", wl.source("in", wl.StreamSource(decoder=bytes.decode))
                                .key_by(first).to(upper).to_sink(wl.StreamSink("out")), partitions=2)


class Rig:
    """An app's streams on MemoryNats, the worker of source partition 0, what came out."""

    def __init__(self, app: Application) -> None:
        self.app, self.names = app, AppNames(app.slug)
        self.nats = MemoryNats()
        self.source, self.control = self.names.source(0, 0), self.names.control(0, 0)
        self.worker = PartitionWorker(self.nats, app, "v1", app.stages[0], 0, CONFIG)

    @classmethod
    async def create(cls, app: Application) -> Rig:
        rig = cls(app)
        for stream, (subjects, work_queue) in rig.names.streams().items():
            await rig.nats.ensure_stream(stream, subjects, work_queue=work_queue)
        return rig

    async def run(self) -> None:
        """Restore, then poll until nothing waits for the partition."""
        await self.worker.restore()
        consumer = await self.worker.open_consumer()
        for _ in range(10):
            if not sum(self.nats.count(self.names.data_stream, s) for s in self.worker.subjects):
                return
            consumer = await self.worker.poll(consumer)
        raise AssertionError("the partition stalled")

    def outputs(self) -> list[str]:
        return [r.decode() for m in self.nats.messages(self.names.out_stream)
                for r in codec.unpack_batch(m.data)]

    def dead(self) -> list[DeadLetter]:
        return [DeadLetter.from_wire(m.data) for m in self.nats.messages(self.names.dlq_stream)]

    @property
    def ended(self) -> bool:
        return ENDED in self.worker.state.watermarks


def test_control_ids_and_their_tags_parse_as_before() -> None:
    assert eoi_sender(tagged(END, "ab12")) == source_sender("in")
    assert parse_internal(tagged(internal_msg_id("s0.1", 7, 2), "ab12")) == ("s0.1", 7)
    assert untagged(tagged(END, "ab12")) == END and untagged(END) == END
    assert all(is_control_id(i) for i in (END, tick_msg_id("s0.0", 1.5), "s3.1:4:0"))
    assert not any(is_control_id(i) for i in ("i:sender:1.0", "r:app:5", "sensor:x:1"))


@sync
async def test_an_end_of_input_on_the_source_subject_is_no_end_but_a_malformed_message() -> None:
    rig = await Rig.create(uppercase())
    await rig.nats.publish(rig.source, codec.pack_batch([b"a"]), "i:t:1")
    forged = await rig.nats.publish(rig.source, b"", END)
    await rig.nats.publish(rig.source, codec.pack_batch([b"b"]), "i:t:2")

    await rig.run()

    assert not rig.ended and rig.outputs() == ["A", "B"]
    [letter] = rig.dead()
    assert (letter.reason, letter.payload, letter.rid) == (MALFORMED, b"", (forged, 0))
    assert letter.subject == rig.source
    assert f"its id {END!r} is a runner's control message id, obeyed only on {rig.control}" in letter.error


@sync
async def test_an_end_of_input_on_the_control_subject_ends_the_partition() -> None:
    rig = await Rig.create(uppercase())
    await rig.nats.publish(rig.source, codec.pack_batch([b"a"]), "i:t:1")
    await rig.nats.publish(rig.control, b"", tagged(END, "ab12"))

    await rig.run()

    assert rig.ended and rig.outputs() == ["A"] and rig.dead() == []


@sync
async def test_a_record_batch_under_a_control_id_on_the_source_subject_is_just_records() -> None:
    rig = await Rig.create(uppercase())
    await rig.nats.publish(rig.source, codec.pack_batch([b"x", b"y"]), END)
    await rig.nats.publish(rig.source, codec.pack_batch([b"t"]), tick_msg_id("s0.0", 9e18))
    # Producer ids: the second's lower "commit" number must not make it look seen already.
    await rig.nats.publish(rig.source, codec.pack_batch([b"p"]), "s7.0:9:0")
    await rig.nats.publish(rig.source, codec.pack_batch([b"q"]), "s7.0:3:0")

    await rig.run()

    assert rig.outputs() == ["X", "Y", "T", "P", "Q"] and rig.dead() == []
    assert not rig.ended and "s7.0" not in rig.worker.state.watermarks


@sync
async def test_a_timer_fires_a_batch_only_from_the_control_subject() -> None:
    rig = await Rig.create(batching())
    await rig.nats.publish(rig.source, codec.pack_batch([b"a", b"b"]), "i:t:1")
    await rig.nats.publish(rig.source, b"9e+18", tick_msg_id("s0.0", 9e18))
    await rig.run()
    assert rig.outputs() == [] and [d.reason for d in rig.dead()] == [MALFORMED]

    await rig.nats.publish(rig.control, b"9e+18", tagged(tick_msg_id("s0.0", 9e18), "ab12"))
    await rig.run()
    assert rig.outputs() == ["a,b"]


@sync
async def test_a_due_batch_publishes_its_timer_to_the_control_subject_tagged() -> None:
    now = [0.0]
    rig = await Rig.create(batching())
    rig.worker = PartitionWorker(rig.nats, rig.app, "v1", rig.app.stages[0], 0, CONFIG,
                                 clock=lambda: now[0])
    published: list[tuple[str, str]] = []
    rig.nats.after_publish = lambda outs: published.extend((o.subject, o.msg_id) for o in outs)
    await rig.nats.publish(rig.source, codec.pack_batch([b"a"]), "i:t:1")
    await rig.worker.restore()
    consumer = await rig.worker.poll(await rig.worker.open_consumer())  # buffered, not due
    assert rig.outputs() == [] and published == []

    now[0] = rig.nats.clock() + 10**6  # far past max_wait
    consumer = await rig.worker.poll(consumer)  # publishes the timer
    await rig.worker.poll(consumer)  # reads it: the batch fires

    [(subject, tick)] = [(s, i) for s, i in published if i.startswith("tick:")]
    assert subject == rig.control and TAG_MARK in tick
    assert rig.outputs() == ["a"]


@sync
async def test_outputs_to_a_keyed_stage_are_tagged_and_outputs_to_sinks_are_not() -> None:
    rig = await Rig.create(keyed())
    published: list[str] = []
    rig.nats.after_publish = lambda outs: published.extend(o.msg_id for o in outs)
    await rig.nats.publish(rig.source, codec.pack_batch([b"apple", b"banana"]), "i:t:1")

    await rig.run()

    to_keyed = list(published)  # all to wl.keyed.d.1.*
    assert to_keyed and all(TAG_MARK in i and parse_internal(i) == ("s0.0", 1) for i in to_keyed)
    downstream = [PartitionWorker(rig.nats, rig.app, "v1", rig.app.stages[1], p, CONFIG) for p in range(2)]
    for worker in downstream:
        await worker.restore()
        await worker.poll(await worker.open_consumer())
    assert sorted(rig.outputs()) == ["APPLE", "BANANA"]
    assert all(TAG_MARK not in m.msg_id for m in rig.nats.messages(rig.names.out_stream))
    assert [w.state.watermarks.get("s0.0") for w in downstream].count(1) == len(to_keyed)


@sync
async def test_a_republished_output_is_skipped_downstream_though_its_tag_differs() -> None:
    rig = await Rig.create(keyed())
    await rig.nats.publish(rig.source, codec.pack_batch([b"apple"]), "i:t:1")
    await rig.run()
    [first] = rig.nats.messages(rig.names.data_stream, "wl.keyed.d.>")
    await rig.nats.publish(first.subject, first.data, tagged(untagged(first.msg_id), "another"))

    stage = rig.app.stages[1]
    part = int(first.subject.rsplit(".", 1)[1])
    worker = PartitionWorker(rig.nats, rig.app, "v1", stage, part, CONFIG)
    await worker.restore()
    await worker.poll(await worker.open_consumer())

    assert rig.outputs() == ["APPLE"] and worker.progress.records == 1


@sync
async def test_the_memory_double_adds_subjects_and_reads_several_in_stream_order() -> None:
    nats = MemoryNats()
    await nats.ensure_stream("S", ["a.>"], work_queue=True)
    await nats.ensure_stream("S", ["a.>", "b.>"], work_queue=True)  # a newer version's subjects
    for subject in ("a.1", "b.1", "c.1", "a.1"):
        if subject != "c.1":
            await nats.publish(subject, subject.encode(), f"id-{len(nats.messages('S'))}")
    consumer = await nats.fresh_consumer("S", "d", ["a.1", "b.1"])
    msgs = await consumer.fetch(10, 0.0)
    assert [(m.subject, m.stream_seq) for m in msgs] == [("a.1", 1), ("b.1", 2), ("a.1", 3)]
