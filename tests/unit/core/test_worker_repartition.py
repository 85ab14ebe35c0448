"""A stage's partition count changed on a redeploy (wallaroo.core.repartition), the real
PartitionWorker on MemoryNats: the old layout drains behind fenced end-of-layout markers, the
new partitions split its final state by key, a migration cut short resumes, a second migrator
is fenced, a drained partition changes no state, and an older version refuses to route into
a layout a newer one ended. tests/chaos/test_repartition_chaos.py runs it on real runners."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import wallaroo as wl
from wallaroo.core import codec, repartition
from wallaroo.core.errors import FencedError
from wallaroo.core.names import AppNames
from wallaroo.core.wire import DeadLetter, Part
from wallaroo.core.worker import LayoutMovedError, PartitionWorker, WorkerConfig
from wallaroo.nats.memory import MemoryNats
from wallaroo.nats.protocol import Consumer
from wallaroo.plan import Application
from wallaroo.testing import FakeClock

CONFIG = WorkerConfig(fetch_timeout=0.0, migrate_bytes=600)  # several records per migration


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return wrapper


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


class Seen:
    def __init__(self) -> None:
        self.batches = 0


@wl.state_batch_computation(name="per key", state=Seen, max_size=3, max_wait=10.0)
def per_key(records: list[str], seen: Seen) -> list[str]:
    seen.batches += 1
    return [f"{records[0]} batch {seen.batches}: {','.join(records)}"]


def batches(partitions: int, layout: tuple[int, tuple[int, int] | None] = (0, None)) -> Application:
    pipeline = (wl.source("lines", wl.StreamSource()).to(split).key_by(word).to(per_key)
                .to_sink(wl.StreamSink("counts")))
    return wl.build_application("wc", pipeline, partitions=partitions).laid_out({1: layout})


@wl.key_extractor
def letter(line: str) -> str:
    return line[:2]  # "w1 => 3" -> "w1"; words w10..w19 share "w1"


@wl.state_computation(name="per prefix", state=Total)
def per_prefix(line: str, total: Total) -> str:
    total.count += 1
    return f"{line[:2]} -> {total.count}"


def two_keyed(partitions: int, layout: tuple[int, tuple[int, int] | None] = (0, None)) -> Application:
    pipeline = (wl.source("lines", wl.StreamSource()).to(split).key_by(word).to(count)
                .key_by(letter).to(per_prefix).to_sink(wl.StreamSink("counts")))
    return wl.build_application("wc", pipeline, partitions=partitions).laid_out({1: layout, 2: layout})


def word_count(partitions: int, layout: tuple[int, tuple[int, int] | None] = (0, None)) -> Application:
    pipeline = (wl.source("lines", wl.StreamSource()).to(split).key_by(word).to(count)
                .to_sink(wl.StreamSink("counts")))
    return wl.build_application("wc", pipeline, partitions=partitions).laid_out({1: layout})


WORDS = [f"w{i}" for i in range(60)]


class Cluster:
    """One app's streams, and every partition's worker of the version running now."""

    def __init__(self, max_payload: int = 1 << 20) -> None:
        self.clock = FakeClock()
        self.nats = MemoryNats(max_payload=max_payload, clock=self.clock.time)
        self.names = AppNames("wc")
        self.sent = 0
        self.live: dict[Part, tuple[PartitionWorker, Consumer]] = {}

    async def create(self) -> Cluster:
        for stream, (subjects, work_queue) in self.names.streams().items():
            await self.nats.ensure_stream(stream, subjects, work_queue=work_queue)
        return self

    def worker(self, app: Application, stage: int, part: int) -> PartitionWorker:
        return PartitionWorker(self.nats, app, "v", app.stages[stage], part, CONFIG,
                               clock=self.clock.time)

    async def deploy(self, app: Application, hold: Part | None = None) -> None:
        """The runner's switch: every worker of `app` (but `hold`) restored and settled (a
        new partition settles only once the old layout drained)."""
        self.live = {}
        for st in app.stages:
            for part in (*st.prev_parts, *st.parts):
                if (st.index, part) == hold:
                    continue
                w = self.worker(app, st.index, part)
                await w.restore()
                self.live[(st.index, part)] = (w, None)  # type: ignore[assignment]
        await self.settle()

    async def settle(self) -> None:
        """Poll every partition until nothing waits and every new partition has its state."""
        while True:
            progressed = False
            for key, (w, consumer) in sorted(self.live.items()):
                if consumer is None:
                    if not await asyncio.wait_for(_settled(w), 5):
                        continue
                    consumer = await w.open_consumer()
                    self.live[key] = (w, consumer)
                    progressed = True
                if self.waiting(w):
                    self.live[key] = (w, await w.poll(consumer))
                    progressed = True
            if not progressed:
                return

    async def tick(self, seconds: float) -> None:
        """Time passes: every partition polls once (a due micro-batch sends its timer)."""
        self.clock.advance(seconds)
        for key, (w, consumer) in sorted(self.live.items()):
            self.live[key] = (w, await w.poll(consumer))
        await self.settle()

    def waiting(self, w: PartitionWorker) -> int:
        return self.nats.count(self.names.data_stream, w.in_subject)

    async def send(self, words: list[str]) -> None:
        self.sent += 1
        line = " ".join(words).encode()
        await self.nats.publish(self.names.source(0, 0), codec.pack_batch([line]), f"i:t:{self.sent}")

    def outputs(self) -> list[str]:
        return [r.decode() for m in self.nats.messages(self.names.out_stream)
                for r in codec.unpack_batch(m.data)]

    def dead(self) -> list[DeadLetter]:
        return [DeadLetter.from_wire(m.data) for m in self.nats.messages(self.names.dlq_stream)]


async def _settled(w: PartitionWorker) -> bool:
    """settle_layout, unless it would wait for an old layout still draining."""
    old = w.stage.prev_parts
    if w.part in w.stage.parts and old and repartition.MIGRATED not in w.state.watermarks:
        marks = [r.watermarks if (r := (await w._last(p))[0]) else {}  # noqa: SLF001
                 for p in old]
        if not all(repartition.drained(m, w.app.senders_of(w.stage)) for m in marks):
            return False
    return await w.settle_layout()


def expected(sent: list[list[str]]) -> Counter[str]:
    totals = Counter(w for words in sent for w in words)
    return Counter(f"{w} => {n}" for w, c in totals.items() for n in range(1, c + 1))


def in_order(outputs: list[str]) -> bool:
    seen: Counter[str] = Counter()
    for line in outputs:
        w, _, n = line.partition(" => ")
        seen[w] += 1
        if int(n) != seen[w]:
            return False
    return True


@sync
async def test_counts_go_on_across_2_5_3_partitions_exactly_once() -> None:
    c = await Cluster().create()
    sent = [WORDS[i:i + 7] + WORDS[: i % 5] for i in range(0, 60, 3)]
    await c.deploy(word_count(2))
    for words in sent[:7]:
        await c.send(words)
    await c.settle()
    # In flight when the version changes: routed by 2 partitions, still in the stage-0 input.
    for words in sent[7:10]:
        await c.send(words)
    five = word_count(5, (2, (0, 2)))
    await c.deploy(five)
    assert all(c.live[(1, p)][0].drained for p in (0, 1))
    for words in sent[10:15]:
        await c.send(words)
    await c.settle()
    three = word_count(3, (7, (2, 5)))
    await c.deploy(three)
    for words in sent[15:]:
        await c.send(words)
    await c.settle()

    assert Counter(c.outputs()) == expected(sent) and in_order(c.outputs())
    assert c.dead() == []
    states = {p: c.live[(1, p)][0].state for p in three.stages[1].parts}
    for p, st in states.items():  # every key in the partition its hash says, once
        assert st.table and all(codec.partition_of(repartition.record_key(s), 3) == p - 7
                                for s in st.table)
    assert sum(len(st.table) for st in states.values()) == len(set(WORDS))


@sync
async def test_a_migration_cut_short_resumes_where_it_stopped_and_a_second_one_is_fenced() -> None:
    c = await Cluster().create()
    vocab = [f"word{i}" for i in range(200)]
    await c.deploy(word_count(2))
    for i in range(0, 200, 4):
        await c.send(vocab[i:i + 4])
    await c.settle()
    five = word_count(5, (2, (0, 2)))
    await c.deploy(five, hold=(1, 2))  # the old layout drains; new partition 2 not started
    first, rival = c.worker(five, 1, 2), c.worker(five, 1, 2)
    await first.restore()
    await rival.restore()  # both saw an empty changelog
    appended = 0
    real_append = first._append  # noqa: SLF001 - the crash point

    async def crash_after_one(*args: Any) -> None:
        nonlocal appended
        if appended == 1:
            raise ConnectionError("killed")
        appended += 1
        await real_append(*args)

    first._append = crash_after_one  # type: ignore[method-assign]  # noqa: SLF001
    with pytest.raises(ConnectionError):
        await first.settle_layout()
    with pytest.raises(FencedError):  # its view of the changelog is stale
        await rival.settle_layout()

    again = c.worker(five, 1, 2)
    await again.restore()
    assert again.state.commit_no == 1 and repartition.MIGRATED not in again.state.watermarks
    assert await again.settle_layout()
    records = [r for r in again.checkpoints.nats.messages(c.names.log_stream, c.names.log(1, 2))]
    assert len(records) > 2  # several records: the state did not fit one small message
    # Cut short again, then restored from the state store alone (its commit number jumps
    # by the epoch): the migration is appended whole again, nothing missing.
    jumped = c.worker(five, 1, 3)
    await jumped.restore()
    jumped.state.commit_no += 1_000_000
    assert await jumped.settle_layout()
    assert jumped.state.watermarks[repartition.MIGRATED] == 1
    assert sorted(repartition.record_key(s) for s in jumped.state.table) == \
        sorted(w for w in vocab if codec.partition_of(w, 5) == 1)
    whole = c.worker(five, 1, 2)
    await whole.restore()
    want = {w: codec.partition_of(w, 5) for w in vocab}
    assert sorted(repartition.record_key(s) for s in whole.state.table) == \
        sorted(w for w, p in want.items() if p == 0)
    assert whole.state.watermarks[repartition.MIGRATED] == 1
    assert whole.state.watermarks["s0.0"] > 0  # stage 0's replays of old commits are dropped


@sync
async def test_a_drained_partition_dead_letters_strays_and_an_older_version_refuses() -> None:
    c = await Cluster().create()
    await c.deploy(word_count(2))
    await c.send(["a", "b", "c"])
    await c.settle()
    await c.deploy(word_count(5, (2, (0, 2))))
    old = c.live[(1, 0)][0]
    assert old.drained
    before = dict(old.state.table)
    # A record that reaches the old layout now (say, replayed) changes no moved state.
    await c.nats.publish(c.names.data(1, 0), codec.dumps_columns(["a"], ["a"]), "x1")
    await c.settle()
    assert old.state.table == before
    assert [(d.key, d.reason, d.error) for d in c.dead()] == [
        ("a", "layout_drained", "arrived after the stage moved to another partition count; "
         "replay it (`wallaroo dlq replay` sends it to the key's partition now)")]
    # The version before the change, started on a stage-0 partition that ended the old layout.
    stale = c.worker(word_count(2), 0, 0)
    await stale.restore()
    with pytest.raises(LayoutMovedError, match="re-partitioned stage 1"):
        await stale.settle_layout()


@sync
async def test_buffered_micro_batches_move_with_their_key_and_fire_once_on_time() -> None:
    c = await Cluster().create()
    keys = [f"k{i}" for i in range(12)]
    await c.deploy(batches(2))
    await c.send([k for k in keys for _ in range(4)])  # each key: a batch of 3 fires, 1 waits
    await c.settle()
    assert len(c.outputs()) == 12
    await c.deploy(batches(5, (2, (0, 2))))
    old = [c.live[(1, p)][0] for p in (0, 1)]
    commits = [w.state.commit_no for w in old]
    await c.tick(5.0)
    assert len(c.outputs()) == 12  # not due yet: 10 s after each buffer's first record
    await c.tick(6.0)  # due: fired by the key's new partition, its old one fires nothing
    await c.tick(20.0)
    assert sorted(c.outputs()) == sorted([f"{k} batch 1: {k},{k},{k}" for k in keys] +
                                         [f"{k} batch 2: {k}" for k in keys])
    assert [w.state.commit_no for w in old] == commits  # drained: no timer, no commit
    assert all(w.drained and w.deadlines for w in old)  # their buffers moved, not fired


@sync
async def test_two_keyed_stages_re_partitioned_at_once_count_on_exactly_once() -> None:
    c = await Cluster().create()
    sent = [WORDS[i:i + 9] for i in range(0, 60, 4)]
    await c.deploy(two_keyed(2))
    for words in sent[:6]:
        await c.send(words)
    await c.settle()
    for words in sent[6:9]:  # in flight at the switch
        await c.send(words)
    five = two_keyed(5, (2, (0, 2)))
    await c.deploy(five)
    for words in sent[9:]:
        await c.send(words)
    await c.settle()

    prefixes = Counter(w[:2] for words in sent for w in words)
    want = Counter(f"{p} -> {n}" for p, total in prefixes.items() for n in range(1, total + 1))
    assert Counter(c.outputs()) == want and c.dead() == []
    for stage in (1, 2):
        assert all(c.live[(stage, p)][0].drained for p in (0, 1))
        assert all(repartition.MIGRATED in c.live[(stage, p)][0].state.watermarks
                   for p in range(2, 7))
