"""Word count over >= 100k words while the runner is SIGKILLed at seeded random moments
(during ingest, processing and recovery) and restarted each time. Proves: the whole output,
as a multiset of "word => n" lines, equals the expected one: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import collect_outputs
from wallaroo import ops
from wallaroo.dev import DevCluster
from wallaroo.names import AppNames
from wallaroo.natsio import Nats

APP = Path(__file__).parents[2] / "examples" / "word_count" / "word_count.py"
VOCAB = Path(__file__).parents[2] / "examples" / "word_count" / "count_this.txt"
WORDS = 100_000
KILLS = 5

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


def make_input(rng: random.Random) -> tuple[list[bytes], Counter[str]]:
    vocab = sorted({w.strip(".,;:()").lower() for w in VOCAB.read_text().split()} - {""})
    words = [rng.choice(vocab) for _ in range(WORDS)]
    lines = [" ".join(words[i : i + 10]).encode() for i in range(0, WORDS, 10)]
    expected = Counter(f"{w} => {n}" for w, c in Counter(words).items() for n in range(1, c + 1))
    return lines, expected


async def output_seq(nats: Nats, slug: str) -> int:
    return await nats.stream_last_seq(AppNames(slug).out_stream)


async def chaos(cluster: DevCluster, rng: random.Random, lines: list[bytes]) -> dict[str, list[str]]:
    nats = await Nats.connect(cluster.url)
    try:
        manifest = await ops.deploy(nats, APP)
        sender = asyncio.create_task(paced_send(nats, manifest, lines))
        kills = 0
        while kills < KILLS and not sender.done():
            await wait_for_progress(nats, manifest.slug)
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            cluster.restart_runner(0, kill=True)
            kills += 1
            print(f"kill {kills}/{KILLS}: runner SIGKILLed and restarted")
        await sender
        assert kills == KILLS, f"input ended after {kills} kills: pace the sender slower"
        await ops.wait_idle(nats, manifest, timeout=180)
        return await collect_outputs(nats, manifest)
    finally:
        await nats.close()


async def paced_send(nats: Nats, manifest: ops.Manifest, lines: list[bytes]) -> None:
    """Input keeps arriving for ~10 s, so every kill lands mid-stream."""
    chunk = len(lines) // 100
    for i in range(0, len(lines), chunk):
        await ops.send(nats, manifest, "lines", lines[i : i + chunk], f"chaos{i}", batch_size=20)
        await asyncio.sleep(0.1)


async def wait_for_progress(nats: Nats, slug: str, timeout: float = 60.0) -> None:
    """Until the (restarted) runner has committed at least one more output."""
    start = await output_seq(nats, slug)
    deadline = time.monotonic() + timeout
    while await output_seq(nats, slug) == start:
        assert time.monotonic() < deadline, "runner made no progress after restart"
        await asyncio.sleep(0.01)


def test_sigkill_during_word_count_is_exactly_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("WALLAROO_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (replay with WALLAROO_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    lines, expected = make_input(rng)
    with DevCluster(tmp_path / "cluster", runners=1, member_ttl=1.0) as cluster:
        outputs = asyncio.run(chaos(cluster, rng, lines))
    got = Counter(outputs["counts"])
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (
        f"seed {seed}: {sum(missing.values())} lines missing (e.g. {list(missing)[:5]}), "
        f"{sum(extra.values())} duplicated/unexpected (e.g. {list(extra)[:5]})"
    )
    assert sum(got.values()) == WORDS
