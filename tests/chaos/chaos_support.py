"""Word count driven by a paced stream, and the whole-output validator the chaos tests share."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.core.names import ASSIGN_BUCKET, LEADER_BUCKET, LEADER_KEY, AppNames
from wallaroo.core.wire import Assignment, Holder, Manifest, Part
from wallaroo.nats import Nats
from wallaroo.nats.client import RETRYABLE

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "word_count" / "word_count.py"
VOCAB = ROOT / "examples" / "word_count" / "count_this.txt"


def seeded() -> tuple[int, random.Random]:
    seed = int(os.environ.get("WALLAROO_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (replay with WALLAROO_CHAOS_SEED={seed})")
    return seed, random.Random(seed)


def make_input(rng: random.Random, words: int) -> tuple[list[bytes], Counter[str]]:
    """Lines of 10 words, and the exact multiset of "word => n" lines word count must emit."""
    vocab = sorted({w.strip(".,;:()").lower() for w in VOCAB.read_text().split()} - {""})
    picks = [rng.choice(vocab) for _ in range(words)]
    lines = [" ".join(picks[i : i + 10]).encode() for i in range(0, words, 10)]
    expected = Counter(f"{w} => {n}" for w, c in Counter(picks).items() for n in range(1, c + 1))
    return lines, expected


def check_exactly_once(outputs: list[str], expected: Counter[str], seed: int) -> None:
    got = Counter(outputs)
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (
        f"seed {seed}: {sum(missing.values())} lines missing (e.g. {list(missing)[:5]}), "
        f"{sum(extra.values())} duplicated/unexpected (e.g. {list(extra)[:5]})"
    )


async def paced_send(nats: Nats, manifest: Manifest, lines: list[bytes], seconds: float,
                     chunks: int = 100) -> None:
    """Input keeps arriving for about `seconds`, so disruptions land mid-stream."""
    size = max(1, len(lines) // chunks)
    for i in range(0, len(lines), size):
        await ingest.send(nats, manifest, "lines", lines[i : i + size], f"chaos{i}", batch_size=20)
        await asyncio.sleep(seconds / chunks)


async def output_seq(nats: Nats, slug: str) -> int:
    return await nats.stream_last_seq(AppNames(slug).out_stream)


async def wait_for_progress(nats: Nats, slug: str, timeout: float = 60.0) -> None:
    """Until at least one more output has been committed."""
    start = await output_seq(nats, slug)
    await eventually(lambda: _grew(nats, slug, start), timeout, "no progress")


async def _grew(nats: Nats, slug: str, start: int) -> bool:
    return await output_seq(nats, slug) > start


async def eventually(cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll `cond` until true; the seconds it took. A probe that times out or finds no
    responders counts as "not yet": a NATS cluster leaves a request unanswered for a moment
    after a bucket is created or while it elects new leaders after a node loss."""
    started = time.monotonic()
    timeouts = 0
    while True:
        try:
            if await cond():
                return time.monotonic() - started
        except RETRYABLE:
            timeouts += 1
        took = time.monotonic() - started
        assert took < timeout, f"{what} within {timeout}s ({timeouts} probe(s) unanswered)"
        await asyncio.sleep(0.05)


async def owners(nats: Nats, slug: str) -> dict[Part, str]:
    raw = await nats.kv_get(ASSIGN_BUCKET, slug)
    return Assignment.from_wire(raw).owners if raw else {}


async def leader(nats: Nats) -> str | None:
    raw = await nats.kv_get(LEADER_BUCKET, LEADER_KEY)
    return Holder.from_wire(raw).runner_id if raw else None


async def finish(nats: Nats, manifest: Manifest) -> list[str]:
    await apps.wait_idle(nats, manifest, timeout=180)
    return (await collect_outputs(nats, manifest))["counts"]


def survivors(folder: Path) -> list[str]:
    """Processes working in `folder` or naming it on their command line (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(proc / "cwd")
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if (cwd.startswith(str(folder)) or str(folder) in cmd) and int(proc.name) != os.getpid():
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


def wait_until_none_survive(folder: Path, timeout: float = 20.0) -> None:
    """After a SIGKILL of `wallaroo run`/`dev`: its runners and nats-server (process groups of
    their own) must die with it, as on a machine that crashed."""
    deadline = time.monotonic() + timeout
    while found := survivors(folder):
        assert time.monotonic() < deadline, f"outlived their parent: {found}"
        time.sleep(0.05)
