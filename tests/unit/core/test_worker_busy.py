"""Long-running steps: user code runs on the worker's own thread, off the event loop, so the
loop (heartbeats, leases) keeps running; the inputs in hand are kept alive past ack_wait; the
worker says how long its batch has been running. The step blocks on an Event the test opens,
so "slow" takes no fixed time. Batches measured to be short run on the loop (last test)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

import wallaroo as wl
from wallaroo.core import calls, codec
from wallaroo.core.names import AppNames
from wallaroo.core.worker import PartitionWorker, WorkerConfig
from wallaroo.nats.memory import MemoryConsumer, MemoryNats
from wallaroo.plan import Application

GATE = threading.Event()  # the step waits here: the test decides when its record is done
RAN_ON: list[int] = []  # the thread each record ran on


@wl.computation(name="wait for the gate")
def wait_for_gate(s: str) -> str:
    RAN_ON.append(threading.get_ident())
    assert GATE.wait(30), "the test never opened the gate"
    if s == "boom":
        raise ValueError(s)
    return s.upper()


APP = wl.build_application("busy", wl.source("in", wl.StreamSource()).to(wait_for_gate)
                           .to_sink(wl.StreamSink("out")))
NAMES = AppNames(APP.slug)


@pytest.fixture(autouse=True)
def _closed_gate() -> None:
    GATE.clear()
    RAN_ON.clear()


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


async def setup(ack_wait: float = 60.0, app: Application = APP
                ) -> tuple[MemoryNats, PartitionWorker, MemoryConsumer]:
    nats = MemoryNats()  # the real clock: ack_wait runs out for real
    for stream, (subjects, work_queue) in NAMES.streams().items():
        await nats.ensure_stream(stream, subjects, work_queue=work_queue)
    cfg = WorkerConfig(fetch_timeout=0.0, ack_wait=ack_wait)
    worker = PartitionWorker(nats, app, "v1", app.stages[0], 0, cfg)
    await worker.restore()
    consumer = await worker.open_consumer()
    assert isinstance(consumer, MemoryConsumer)
    return nats, worker, consumer


def outputs(nats: MemoryNats) -> list[bytes]:
    return [r for m in nats.messages(NAMES.out_stream) for r in codec.unpack_batch(m.data)]


def test_user_code_runs_on_one_thread_of_its_own_while_the_loop_runs() -> None:
    async def body() -> None:
        nats, worker, consumer = await setup()
        await nats.publish(NAMES.source(0, 0), codec.pack_batch([b"a", b"b"]), "i:t:1")
        polling = asyncio.create_task(worker.poll(consumer))
        ticks = 0
        while not RAN_ON:  # the loop keeps turning while the step waits
            ticks += 1
            await asyncio.sleep(0.01)
        await until(lambda: worker.busy_for() > 0.05, "busy for a while")
        assert ticks > 0 and not polling.done()
        GATE.set()
        await polling
        assert worker.busy_for() == 0.0
        assert outputs(nats) == [b"A", b"B"]
        assert len(set(RAN_ON)) == 1 and RAN_ON[0] != threading.get_ident()
        worker.close()

    asyncio.run(body())


def test_inputs_in_hand_are_kept_alive_past_ack_wait_and_never_run_twice() -> None:
    async def body() -> None:
        nats, worker, consumer = await setup(ack_wait=0.3)
        seq = await nats.publish(NAMES.source(0, 0), codec.pack_batch([b"slow"]), "i:t:1")
        polling = asyncio.create_task(worker.poll(consumer))
        await until(lambda: bool(RAN_ON), "the step started")
        fetched = time.monotonic()
        await until(lambda: time.monotonic() - fetched > 1.0, "three ack_waits went by")
        assert consumer.pending[seq].deadline > nats.clock()  # still held: no redelivery due
        GATE.set()
        await polling

        assert await consumer.fetch(16, 0) == []
        assert outputs(nats) == [b"SLOW"] and len(RAN_ON) == 1
        assert consumer.pending == {}
        worker.close()

    asyncio.run(body())


def test_busy_for_is_zero_again_after_a_step_failed() -> None:
    async def body() -> None:
        nats, worker, consumer = await setup()
        await nats.publish(NAMES.source(0, 0), codec.pack_batch([b"boom"]), "i:t:1")
        GATE.set()
        await worker.poll(consumer)  # retried, then dead-lettered: the partition flows
        assert worker.busy_for() == 0.0
        assert worker.progress.dead == 1 and len(RAN_ON) == worker.cfg.retry.attempts
        worker.close()

    asyncio.run(body())


@wl.computation(name="may it call")
def may_it_call(s: str) -> str:
    return f"{s}: {'refused' if calls.blocking_calls_forbidden() else 'allowed'}"


def test_only_steps_of_a_pipeline_attached_to_an_app_may_call_functions() -> None:
    """Attached (app.calls): calls get ids derived from the record, so exactly once per
    record. Not attached: the step's thread refuses calls, as the runner's loop thread does."""
    loose = wl.build_application("busy", wl.source("in", wl.StreamSource()).to(may_it_call)
                                 .to_sink(wl.StreamSink("out")))

    async def body(app: Application) -> list[bytes]:
        nats, worker, consumer = await setup(app=app)
        await nats.publish(NAMES.source(0, 0), codec.pack_batch([b"x"]), "i:t:1")
        await worker.poll(consumer)
        worker.close()
        return outputs(nats)

    assert asyncio.run(body(loose)) == [b"x: refused"]
    assert asyncio.run(body(dataclasses.replace(loose, calls=True))) == [b"x: allowed"]


@wl.computation(name="maybe slow")
def maybe_slow(s: str) -> str:
    RAN_ON.append(threading.get_ident())
    if s.startswith("nap "):
        time.sleep(float(s.split()[1]))  # a step that suddenly blocks, as on a slow service
    return s


SOMETIMES_SLOW = wl.build_application("busy", wl.source("in", wl.StreamSource()).to(maybe_slow)
                                      .to_sink(wl.StreamSink("out")))


def test_short_batches_run_inline_until_one_runs_long_then_always_on_the_thread() -> None:
    """The first batch goes to the thread (nothing is known of the step yet); batches its
    measurements say are short run on the loop; one that ran far longer than predicted
    (the step may block again) sends the partition's user code to its thread for good."""
    async def body() -> list[int]:
        nats, worker, consumer = await setup(app=SOMETIMES_SLOW)
        loop_thread = threading.get_ident()
        for n, record in enumerate([b"first", b"short", b"nap 0.6", b"after"], start=1):
            await nats.publish(NAMES.source(0, 0), codec.pack_batch([record]), f"i:t:{n}")
            await worker.poll(consumer)
        worker.close()
        return [0 if ran == loop_thread else 1 for ran in RAN_ON]

    assert asyncio.run(body()) == [1, 0, 0, 1]  # thread, loop, loop (0.6 s: too long), thread
