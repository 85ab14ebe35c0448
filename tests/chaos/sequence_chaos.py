"""What the sequence-window chaos scenarios (test_survive.py) share: the seeded RNG, the paced
in-order input, lease and ownership probes, and the whole-output check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos_support import eventually, owners
from sequence_validator import keys, make_input, report, validate

from conftest import collect_outputs
from wallaroo.control import apps, dlq, ingest
from wallaroo.core import codec
from wallaroo.core.names import LEASES_BUCKET, AppNames
from wallaroo.core.observe import runner_heartbeats
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import RunnerProcess
from wallaroo.nats import Nats

APPS = Path(__file__).parent / "apps"
APP = APPS / "sequence_window.py"
APP_V2 = APPS / "sequence_window_v2.py"
SLUG = "sequence_window"
K = 20  # keys
N = 400  # values per key: K * N = 8000 records, 8000 windows
SEND_SECONDS = 6.0  # the input trickles in for this long, so every failure lands mid-stream
KEYED_STAGE = 1  # stage 0 decodes (1 partition), stage 1 keeps the windows (8 partitions)
TTL = 1.0  # runner membership TTL: a SIGKILLed runner is gone after ~1 s


@dataclass
class Sent:
    """How many records the sender has had acknowledged so far."""

    records: int = 0


@dataclass
class Hold:
    """After the first `at` values, the input slows to one value per `trickle` seconds until
    released. Why: a scenario that waits for something before its failure (snapshots in S3,
    a compaction in a helper process) must still find input flowing when it strikes, however
    slow the host (a fixed pace ran out of input first on a loaded one); a trickle, not a
    stop, because what it waits for needs commits to happen."""

    at: int
    trickle: float = 0.5
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def pace(self, sent: int, seconds: float) -> float:
        """Seconds from sending value number `sent` (1-based) to sending the next."""
        held = sent >= self.at and not self.released.is_set()
        return self.trickle if held else seconds / N


async def paced_send(nats: Nats, manifest: Manifest, sending: asyncio.Lock, sent: Sent,
                     seconds: float, hold: Hold) -> None:
    """All K * N records over about `seconds` (longer while `hold` holds them), one message
    (one value of every key) at a time, each acknowledged before the next, holding `sending`
    meanwhile. Why one at a time: a publish retried after a timeout (NATS node loss) must not
    land after a later one, or the INPUT would be out of order and the validator would blame
    the runtime."""
    records = make_input(K, N)
    due = time.monotonic()
    for i in range(N):
        async with sending:
            await ingest.send(nats, manifest, "values", records[i * K : (i + 1) * K], f"seq{i}",
                           batch_size=K)
            sent.records += K
        due += hold.pace(i + 1, seconds)
        ahead = due - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)  # pacing the input, not waiting for a condition


@dataclass
class Stream:
    """A deployed sequence-window app with its input arriving in the background."""

    nats: Nats
    manifest: Manifest
    sender: asyncio.Task[None]
    sending: asyncio.Lock  # held by the sender while a message is in flight
    sent: Sent
    hold: Hold

    @property
    def slug(self) -> str:
        return self.manifest.slug

    def mid_stream(self, what: str) -> None:
        assert not self.sender.done(), f"input ended before {what}: pace the sender slower"

    def release(self) -> None:
        """The input goes on at its pace (see Hold)."""
        self.hold.released.set()


async def run_scenario(url: str, chaos: Callable[[Stream], Awaitable[None]], *, spread: int,
                       seconds: float = SEND_SECONDS, hold_at: int = N + 1) -> list[str]:
    """Deploy, wait until `spread` runners own partitions, stream the input while `chaos`
    runs, then return the whole output once every stage is idle. If sending the input
    fails, that error ends the scenario at once. With `hold_at`, the input trickles after the
    first `hold_at` values until `chaos` calls Stream.release (see Hold); the default, N + 1,
    is past the last value: no hold."""
    nats = await Nats.connect(url)
    try:
        m = await apps.deploy(nats, APP)
        await eventually(lambda: spread_over(nats, m.slug, spread), 30, f"{spread} runners own partitions")
        lock, sent, hold = asyncio.Lock(), Sent(), Hold(hold_at)
        sender = asyncio.create_task(paced_send(nats, m, lock, sent, seconds, hold))
        stream = Stream(nats, m, sender, lock, sent, hold)
        await first_failure(asyncio.create_task(chaos(stream)), stream.sender)
        return await windows(nats, m)
    finally:
        await nats.close()


async def first_failure(*tasks: asyncio.Task[None]) -> None:
    """Wait for all `tasks`; the first one to fail cancels the others and raises its error."""
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
    finally:
        for task in pending:
            task.cancel()


async def windows(nats: Nats, manifest: Manifest, timeout: float = 60.0) -> list[str]:
    """The whole output, once every stage is idle. No record of this app may fail, so a
    dead letter fails the test at once, with its error (rather than after `timeout`)."""
    await eventually(lambda: idle_or_dead(nats, manifest), timeout, "all input processed")
    return (await collect_outputs(nats, manifest))["windows"]


class DeadLettered(AssertionError):
    """Records of the app went to its dead-letter stream (none of them should ever fail)."""


async def idle_or_dead(nats: Nats, manifest: Manifest) -> bool:
    dead = await dlq.dead_letters(nats, manifest, limit=5)
    if dead:
        raise DeadLettered(f"{len(dead)}+ record(s) dead-lettered, e.g. stage {dead[0].stage} "
                           f"key {dead[0].key!r}: {dead[0].error}")
    try:
        await apps.wait_idle(nats, manifest, timeout=0.5)
    except TimeoutError:  # not idle yet, or a lag probe went unanswered: poll again
        return False
    return True


def check_windows(lines: list[str], seed: int) -> None:
    found = validate(lines, keys(K), N)
    assert not found, f"seed {seed}: {len(lines)} windows, {report(found)}"
    assert len(lines) == K * N


async def progress(s: Stream, timeout: float = 30.0, sent: int | None = None) -> float:
    """Seconds until an output shows a value sent after the first `sent` records (default:
    those sent by now). Why not "the output grew": work in flight makes it grow without any
    recovery, and once all input is processed it never grows again (a probe that waited out
    a NATS election would then see no progress at all). Once the whole input is sent, no value
    is past it: progress is then the last value, N, showing up."""
    values_sent = min((s.sent.records if sent is None else sent) // K, N - 1)  # value by value

    async def beyond() -> bool:
        return await newest_value(s) > values_sent

    return await eventually(beyond, timeout, f"a window with a value past {values_sent}")


async def newest_value(s: Stream) -> int:
    """The highest value in the windows of the newest output message (0 before any). Its
    partition may lag the others, but once all input is processed it holds value N."""
    newest = await s.nats.last_on_subject(AppNames(s.slug).out_stream, AppNames(s.slug).out("windows"))
    if newest is None:
        return 0
    lines = (line.decode().strip() for line in codec.unpack_batch(newest.data))  # "k3:[5,6,7,8]"
    return max(int(line[line.index("[") + 1 : -1].split(",")[-1]) for line in lines)


async def spread_over(nats: Nats, slug: str, n: int) -> bool:
    return len(set((await owners(nats, slug)).values())) == n


async def leases(nats: Nats, slug: str, stage: int | None = None) -> dict[str, str]:
    """Lease key "<slug>.<stage>.<part>" -> the runner holding it."""
    held = {}
    for key in await nats.kv_keys(LEASES_BUCKET):
        if key.startswith(f"{slug}.") and (stage is None or key.split(".")[1] == str(stage)):
            raw = await nats.kv_get(LEASES_BUCKET, key)
            if raw is not None:
                held[key] = raw.decode()
    return held


def log_subject(lease_key: str) -> str:
    """The changelog subject of the partition a lease key names."""
    slug, stage, part = lease_key.split(".")
    return AppNames(slug).log(int(stage), int(part))


def by_id(runners: list[RunnerProcess], runner_id: str) -> int:
    return next(i for i, r in enumerate(runners) if r.runner_id == runner_id)


async def all_run_version(nats: Nats, slug: str, version: str, n: int) -> bool:
    beats = await runner_heartbeats(nats)
    return len(beats) == n and all(slug in b.apps and b.apps[slug].version == version for b in beats)


def log_after(log_file: Path, marker: str) -> list[str] | None:
    """The log lines after the first one containing `marker`; None if no line has it."""
    lines = log_file.read_text(errors="replace").splitlines()
    at = next((i for i, line in enumerate(lines) if marker in line), None)
    return None if at is None else lines[at + 1 :]
