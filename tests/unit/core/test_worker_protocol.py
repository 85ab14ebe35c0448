"""The commit protocol's edge cases (DESIGN.md, "Commit protocol"), one test each: the real
PartitionWorker on MemoryNats, with the faults a real server produces only by bad luck injected
by hand. tests/integration/test_fence.py and test_restore_republish.py run two of them on a real
nats-server."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

import wallaroo as wl
from wallaroo.core import codec
from wallaroo.core.errors import FencedError
from wallaroo.core.names import AppNames
from wallaroo.core.wire import CommitRecord, DeadLetter, Part
from wallaroo.core.worker import PAYLOAD_MARGIN, PartitionWorker, ResyncNeeded, WorkerConfig
from wallaroo.nats.memory import DEFAULT_MAX_PAYLOAD, MemoryNats
from wallaroo.nats.protocol import Consumer, InMsg, Out
from wallaroo.plan import Application
from wallaroo.testing import FakeClock

CONFIG = WorkerConfig(fetch_timeout=0.0)


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test, run to the end in its own event loop."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return wrapper


# --- apps -------------------------------------------------------------------------------------

@wl.computation(name="upper")
def upper(s: str) -> str:
    return s.upper()


@wl.computation(name="blow up")
def blow_up(s: str) -> str:
    return "x" * int(s)  # a record "900" makes a 900-byte output


@wl.computation_multi(name="split")
def split(line: str) -> list[str]:
    return line.split()


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


def one_step(step: Any) -> Application:
    return wl.build_application("one", wl.source("in", wl.StreamSource()).to(step)
                                .to_sink(wl.StreamSink("out")))


def word_count() -> Application:
    pipeline = (wl.source("lines", wl.StreamSource()).to(split).key_by(word).to(count)
                .to_sink(wl.StreamSink("counts")))
    return wl.build_application("word count", pipeline, partitions=2)


# --- a rig: streams, workers, inputs and what came out ------------------------------------------

class Crash(Exception):  # noqa: N818 - the simulated process dies where this is raised
    pass


class Rig:
    def __init__(self, app: Application, max_payload: int, dedup_window: float | None) -> None:
        self.app, self.names, self.clock = app, AppNames(app.slug), FakeClock()
        self.nats = MemoryNats(max_payload=max_payload, clock=self.clock.time)
        self.dedup_window = dedup_window
        self.sent = 0

    @classmethod
    async def create(cls, app: Application, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
                     dedup_window: float | None = None) -> Rig:
        rig = cls(app, max_payload, dedup_window)
        for stream, (subjects, work_queue) in rig.names.streams().items():
            await rig.nats.ensure_stream(stream, subjects, work_queue=work_queue,
                                         dedup_window=dedup_window)
        return rig

    def worker(self, stage: int = 0, part: int = 0) -> PartitionWorker:
        return PartitionWorker(self.nats, self.app, "v1", self.app.stages[stage], part, CONFIG,
                               sleep=self.clock.sleep)

    async def send(self, *records: str) -> int:
        """One input message to the source stage; its stream seq."""
        self.sent += 1
        return await self.nats.publish(self.names.source(0, 0), codec.pack_batch(list(records)),
                                       f"i:test:{self.sent}")

    def outputs(self) -> list[str]:
        return [r.decode() for m in self.nats.messages(self.names.out_stream)
                for r in codec.unpack_batch(m.data)]

    def dead(self) -> list[DeadLetter]:
        return [DeadLetter.from_wire(m.data) for m in self.nats.messages(self.names.dlq_stream)]

    def waiting(self, stage: int = 0, part: int = 0) -> int:
        subject = self.names.input(stage, part, self.app.stages[stage].source is not None)
        return self.nats.count(self.names.data_stream, subject)

    def stored_on(self, stage: int) -> int:
        return len(self.nats.messages(self.names.data_stream, f"wl.{self.app.slug}.d.{stage}.*"))


async def fetch(worker: PartitionWorker) -> list[InMsg]:
    consumer = await worker.open_consumer()
    return await consumer.fetch(16, 0)


class Process:
    """Every partition's worker, as one runner process runs them; `start` after a crash."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.live: dict[Part, tuple[PartitionWorker, Consumer]] = {}

    async def start(self) -> None:
        self.live = {}
        for stage in self.rig.app.stages:
            for part in range(stage.partitions):
                w = self.rig.worker(stage.index, part)
                await w.restore()
                self.live[(stage.index, part)] = (w, await w.open_consumer())

    async def settle(self, stages: Sequence[int] = (0, 1)) -> None:
        """Poll the partitions of `stages`, upstream first, until no input waits there."""
        while ready := [p for p in sorted(self.live) if p[0] in stages and self.rig.waiting(*p)]:
            worker, consumer = self.live[ready[0]]
            waiting = self.rig.waiting(*ready[0])
            self.live[ready[0]] = (worker, after := await worker.poll(consumer))
            assert after is not consumer or self.rig.waiting(*ready[0]) < waiting, "stuck"

    def worker(self, part: Part) -> PartitionWorker:
        return self.live[part][0]


# --- (a) the fence ------------------------------------------------------------------------------

@sync
async def test_a_stale_owner_is_fenced_and_publishes_and_acks_nothing() -> None:
    rig = await Rig.create(one_step(upper))
    stale = rig.worker()
    await stale.restore()
    # Another owner commits meanwhile (an input of its own, not one this batch holds).
    other = CommitRecord(1, 0, 0, {}, {}, [Out(rig.names.out("out"), codec.pack_batch([b"X"]), "o")])
    await rig.nats.publish(rig.names.log(0, 0), other.to_wire(), "c:other:1")
    seq = await rig.send("xyz", "uvw")

    with pytest.raises(FencedError, match="another owner committed"):
        await stale.handle(await fetch(stale))

    assert rig.outputs() == []  # published nothing
    assert await rig.nats.msg_exists(rig.names.data_stream, seq)  # acked nothing
    assert stale.state.commit_no == 0  # and believes nothing it could not commit
    owner = rig.worker()  # the rightful owner, restored, carries on with that input
    await owner.restore()
    await owner.handle(await fetch(owner))
    assert (owner.state.commit_no, rig.outputs()) == (2, ["XYZ", "UVW"])


# --- (b) a delivery gap ----------------------------------------------------------------------

@sync
async def test_a_delivery_gap_rebuilds_the_consumer_from_the_committed_seq(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = await Rig.create(one_step(upper))
    worker = rig.worker()
    await worker.restore()
    consumer = await worker.open_consumer()
    seqs = [await rig.send(record) for record in "abcd"]
    rig.nats.drop_next_ack(rig.names.source(0, 0))  # "a" is committed but stays in the queue
    await worker.handle(await consumer.fetch(1, 0))

    rig.nats.drop_next_delivery(rig.names.source(0, 0))  # "b" is lost: consumer seq 2 skipped
    gapped = await consumer.fetch(16, 0)
    assert [m.consumer_seq for m in gapped] == [3, 4]
    with pytest.raises(ResyncNeeded):
        await worker.handle(gapped)
    assert (rig.outputs(), worker.state.commit_no) == (["A"], 1)  # nothing after the gap ran

    rig.clock.advance(CONFIG.ack_wait)  # all four come back, after the same gap
    with caplog.at_level(logging.WARNING, logger="wallaroo.worker"):
        rebuilt = await worker.poll(consumer)  # the worker loop's answer to the gap
    assert rebuilt is not consumer and "delivery gap" in caplog.text
    assert not await rig.nats.msg_exists(rig.names.data_stream, seqs[0])  # from the committed seq
    await worker.poll(rebuilt)
    assert rig.outputs() == ["A", "B", "C", "D"]  # "a" not again, "b" not lost
    assert rig.waiting() == 0


# --- (c) restore republishes only unacked commits ------------------------------------------

def crash_after(nats: MemoryNats, where: str) -> None:
    """The next commit stops (as if the process died) right after its append or publish."""
    def crash(*_: object) -> None:
        nats.after_append = nats.after_publish = None
        raise Crash

    def arm(subject: str, seq: int) -> None:
        nats.after_append, nats.after_publish = None, crash

    if where == "append":
        nats.after_append = crash
    else:
        nats.after_append = arm


@sync
async def test_restore_republishes_a_commit_whose_inputs_were_never_acked() -> None:
    rig = await Rig.create(one_step(upper))
    first = rig.worker()
    await first.restore()
    await rig.send("x")
    await rig.send("y")
    crash_after(rig.nats, "append")
    with pytest.raises(Crash):
        await first.handle(await fetch(first))
    assert rig.outputs() == []

    again = rig.worker()
    await again.restore()
    assert rig.outputs() == ["X", "Y"]
    await again.restore()  # a second restore within the dedup window stores nothing new
    await again.handle(await fetch(again))  # the inputs are committed: none runs again
    assert (rig.outputs(), rig.waiting(), again.progress.commits) == (["X", "Y"], 0, 0)


@pytest.mark.parametrize("acked", [(0,), (1,), (0, 1)], ids=["first", "last", "both"])
@sync
async def test_restore_does_not_republish_once_an_input_was_acked_even_past_the_dedup_window(
    acked: tuple[int, ...],
) -> None:
    rig = await Rig.create(one_step(upper), dedup_window=5.0)
    first = rig.worker()
    await first.restore()
    await rig.send("x")
    await rig.send("y")
    msgs = await fetch(first)
    crash_after(rig.nats, "publish")
    with pytest.raises(Crash):
        await first.handle(msgs)  # one commit of both inputs, published, not acked
    for i in acked:
        await msgs[i].ack()
    rig.clock.advance(10.0)

    again = rig.worker()
    await again.restore()
    assert again.state.commit_no == 1
    assert rig.outputs() == ["X", "Y"]
    # ...where a second publish would now be stored twice: the ack alone kept it out
    assert again.state.last is not None
    await rig.nats.publish_all(again.state.last.outs)
    assert rig.outputs() == ["X", "Y", "X", "Y"]


# --- (d) commits too big for one message ------------------------------------------------------

SMALL = PAYLOAD_MARGIN + 4096  # commit records of at most 4096 bytes; outputs of 1024


@sync
async def test_a_commit_too_big_for_one_message_splits_into_smaller_commits() -> None:
    rig = await Rig.create(one_step(blow_up), max_payload=SMALL)
    worker = rig.worker()
    await worker.restore()
    for _ in range(5):
        await rig.send("900")  # 4500 bytes of outputs in all: more than one commit holds

    await worker.handle(await fetch(worker))

    assert worker.state.commit_no == 2
    assert rig.outputs() == ["x" * 900] * 5
    assert (rig.dead(), rig.waiting()) == ([], 0)


@sync
async def test_a_record_whose_output_can_never_fit_is_dead_lettered_and_the_partition_flows() -> None:
    rig = await Rig.create(one_step(blow_up), max_payload=SMALL)
    worker = rig.worker()
    await worker.restore()
    await rig.send("5000")
    await rig.send("10")

    await worker.handle(await fetch(worker))

    [dead] = rig.dead()
    assert (dead.step, dead.reason, dead.payload) == ("output", "output_error", b"5000")
    assert "larger than the 1024-byte limit" in dead.error
    assert rig.outputs() == ["x" * 10]
    assert rig.clock.now > 0  # its retries waited on the fake clock, not for real


@sync
async def test_a_message_whose_outputs_never_fit_together_is_dead_lettered_whole() -> None:
    rig = await Rig.create(one_step(blow_up), max_payload=SMALL)
    worker = rig.worker()
    await worker.restore()
    await rig.send(*["800"] * 6)  # each output fits; together they never do
    await rig.send("10")

    await worker.handle(await fetch(worker))

    dead = rig.dead()
    assert [d.reason for d in dead] == ["commit_too_large"] * 6
    assert [d.rid for d in dead] == [(1, i) for i in range(6)]
    assert rig.outputs() == ["x" * 10]
    assert rig.waiting() == 0


# --- (e) a crash between the append and the ack ------------------------------------------------

def fault(nats: MemoryNats, stage: int, kind: str, crashed: list[str]) -> None:
    """The next commit of any partition of `stage` fails after its append: the process dies
    there ("append"), its publish fails half way ("publish_half"), or it dies after the
    publish, before the ack ("publish")."""
    def after_append(subject: str, seq: int) -> None:
        if not subject.startswith(f"wl.word_count.log.{stage}."):
            return
        nats.after_append = None
        crashed.append(subject)
        if kind == "append":
            raise Crash
        if kind == "publish_half":
            nats.fail_next_publish(stored=1)
        else:
            nats.after_publish = die

    def die(outs: Sequence[Out]) -> None:
        nats.after_publish = None
        raise Crash

    nats.after_append = after_append


EXPECTED = ["a => 1", "a => 2", "a => 3", "a => 4", "b => 1", "b => 2", "c => 1", "d => 1"]


@pytest.mark.parametrize("kind", ["append", "publish_half", "publish"])
@pytest.mark.parametrize("stage", [0, 1])
@sync
async def test_after_a_crash_between_append_and_ack_outputs_are_exactly_once(stage: int, kind: str) -> None:
    rig = await Rig.create(word_count())
    process = Process(rig)
    await process.start()
    await rig.send("a b a")
    await process.settle()
    crashed: list[str] = []
    fault(rig.nats, stage, kind, crashed)
    await rig.send("b a c", "a d")

    with pytest.raises((Crash, TimeoutError)):
        await process.settle()
    part = (stage, int(crashed[0].rsplit(".", 1)[1]))
    await process.start()  # fresh workers: restore from the changelogs, republish
    # the crashed commit is in the changelog, so it counts
    assert process.worker(part).state.commit_no == len(rig.nats.messages(rig.names.log_stream, crashed[0]))
    await process.settle()

    assert sorted(rig.outputs()) == EXPECTED
    assert process.worker(part).progress.commits == 0  # its inputs did not run again
    ids = [m.msg_id for m in rig.nats.messages(rig.names.out_stream)]
    assert len(ids) == len(set(ids))


@sync
async def test_an_input_redelivered_after_its_ack_was_lost_is_acked_not_run_again() -> None:
    rig = await Rig.create(one_step(upper))
    worker = rig.worker()
    await worker.restore()
    consumer = await worker.open_consumer()
    await rig.send("a")
    rig.nats.drop_next_ack(rig.names.source(0, 0))
    await worker.poll(consumer)
    rig.clock.advance(CONFIG.ack_wait)

    [again] = await consumer.fetch(16, 0)
    assert (again.deliveries, again.consumer_seq) == (2, 2)
    await worker.handle([again])

    assert (rig.outputs(), rig.waiting(), worker.state.commit_no) == (["A"], 0, 1)


@sync
async def test_a_stage_output_stored_twice_past_the_dedup_window_is_skipped_downstream() -> None:
    rig = await Rig.create(word_count(), dedup_window=5.0)
    process = Process(rig)
    await process.start()
    fault(rig.nats, 0, "publish", [])
    await rig.send("a b a", "c")
    with pytest.raises(Crash):
        await process.settle()  # stage 0 published its commit, never acked its input
    await process.settle(stages=[1])  # stage 1 counts those words; stage 0's input waits
    assert rig.waiting(0) == 1
    rig.clock.advance(10.0)

    await process.start()  # stage 0 publishes its commit again: stored twice by now
    assert rig.stored_on(1) > 0
    await process.settle()

    assert Counter(rig.outputs()) == Counter(["a => 1", "a => 2", "b => 1", "c => 1"])
    assert rig.stored_on(1) == 0
