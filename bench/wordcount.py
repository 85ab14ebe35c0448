"""Word count throughput and latency, exactly-once on, one runner, file-backed JetStream.

Prints records/s of the runner next to the same user functions in a plain Python loop, measured
in the same run, and their ratio; then p50/p99 end-to-end latency at a steady input rate.

    python bench/wordcount.py [--words 1000000] [--rate 20000] [--latency-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from wallaroo.control import apps, ingest, outputs
from wallaroo.core import codec
from wallaroo.core.names import AppNames
from wallaroo.core.packaging import load_app
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats, Out

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "word_count" / "word_count.py"
VOCAB_FILE = ROOT / "examples" / "word_count" / "count_this.txt"
WORDS_PER_LINE = 10


def make_lines(words: int, seed: int = 7) -> list[bytes]:
    vocab = sorted({w.strip(".,;:()").lower() for w in VOCAB_FILE.read_text().split()} - {""})
    rng = random.Random(seed)
    picks = [rng.choice(vocab) for _ in range(words)]
    return [" ".join(picks[i : i + WORDS_PER_LINE]).encode() for i in range(0, words, WORDS_PER_LINE)]


def plain_loop(lines: list[bytes]) -> float:
    """The app's own functions, called directly: decode, split, key, count, encode."""
    _, module = load_app(APP)
    states: dict[str, object] = {}
    start = time.perf_counter()
    out = 0
    for raw in lines:
        for word in module.split(module.decode_line(raw)):
            key = module.extract_word(word)
            state = states.get(key)
            if state is None:
                state = states[key] = module.WordTotal()
            module.encode_word_count(module.count_word(word, state)).encode()
            out += 1
    return out / (time.perf_counter() - start)


async def throughput(url: str, key: Path, creds: Path, lines: list[bytes], words: int) -> float:
    nats = await Nats.connect(url, creds=creds)
    try:
        manifest = await apps.deploy(nats, APP, key=key)
        await apps.wait_idle(nats, manifest, timeout=60)  # workers up, consumers created
        start = time.perf_counter()
        await ingest.send(nats, manifest, "lines", lines, "bench", progress=_progress(words))
        await apps.wait_idle(nats, manifest, timeout=600, poll=0.1)
        elapsed = time.perf_counter() - start
        print(file=sys.stderr)
        return words / elapsed
    finally:
        await nats.close()


def _progress(total_words: int):  # type: ignore[no-untyped-def]
    def show(lines_sent: int) -> None:
        print(f"\r  sent {lines_sent * WORDS_PER_LINE:,}/{total_words:,} words", end="",
              file=sys.stderr, flush=True)

    return show


async def latency(url: str, key: Path, creds: Path, rate: int, seconds: float
                  ) -> tuple[float, float, int]:
    """Each record is one unique word `w<i>`; its output `w<i> => 1` tells when it arrived."""
    nats = await Nats.connect(url, creds=creds)
    try:
        manifest = await apps.deploy(nats, APP, key=key)
        await apps.wait_idle(nats, manifest, timeout=60)  # steady state: workers up
        sent: dict[int, float] = {}
        lat: list[float] = []
        reader = asyncio.create_task(_read_latencies(nats, manifest, sent, lat))
        await _paced_send(nats, manifest, rate, seconds, sent)
        await apps.wait_idle(nats, manifest, timeout=120)
        deadline = time.monotonic() + 30
        while len(lat) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
        lat.sort()
        return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat)
    finally:
        await nats.close()


async def _paced_send(nats: Nats, manifest: Manifest, rate: int, seconds: float,
                      sent: dict[int, float]) -> None:
    tick = 0.005
    per_tick = max(1, int(rate * tick))
    names = AppNames(manifest.slug)
    start = time.monotonic()
    n = 0
    for t in range(int(seconds / tick)):
        await asyncio.sleep(max(0.0, start + t * tick - time.monotonic()))
        batch = [f"w{n + i}".encode() for i in range(per_tick)]
        now = time.monotonic()
        for i in range(per_tick):
            sent[n + i] = now
        await nats.publish_all([Out(names.source(0, 0), codec.pack_batch(batch), f"i:lat:{t}")])
        n += per_tick


async def _read_latencies(nats: Nats, manifest: Manifest, sent: dict[int, float],
                          lat: list[float]) -> None:
    async for _, _, outs in outputs.tail(nats, manifest, None):
        now = time.monotonic()
        for out in outs:
            seq = int(out.split(b" ", 1)[0][1:])
            lat.append(now - sent[seq])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--words", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=20_000, help="records/s for the latency run")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    args = p.parse_args()
    lines = make_lines(args.words)
    base = plain_loop(lines)
    with tempfile.TemporaryDirectory() as tmp, DevCluster(Path(tmp) / "c", runners=1) as cluster:
        rate = asyncio.run(throughput(cluster.url, cluster.deploy_key, cluster.creds("deployer"),
                                      lines, args.words))
    print(f"plain python loop : {base:12,.0f} records/s")
    print(f"wallaroo (1 runner, exactly-once, file JetStream): {rate:12,.0f} records/s")
    print(f"ratio             : {rate / base:.3f}  (aim >= 0.25)")
    with tempfile.TemporaryDirectory() as tmp, DevCluster(Path(tmp) / "c", runners=1) as cluster:
        p50, p99, n = asyncio.run(latency(cluster.url, cluster.deploy_key, cluster.creds("deployer"),
                                          args.rate, args.latency_seconds))
    print(f"latency at {args.rate:,} records/s over {n:,} records: "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
