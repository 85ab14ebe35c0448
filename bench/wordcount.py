"""Word count throughput, memory and latency, exactly-once on, one runner, file-backed JetStream.

All figures come from the same run:

- Throughput, records/s (one record = one word out of the app): Wallaroo (one runner,
  exactly-once) next to the same user functions in a plain Python loop, and next to Bytewax
  0.21 running them (split, extract_word, count_word with a WordTotal per word,
  encode_word_count: bench/apps/bytewax_wordcount.py) as a streaming dataflow over the same
  lines, 1 worker, recovery on (SQLite, `-s 5 -b 0` as bench/job.py), as a whole
  `python -m bytewax.run` process. Wallaroo is timed from the first line sent to the app idle
  again (every output committed), after deploy and workers up. Bytewax is timed from inside
  its dataflow: from the source's first read to the sink's last write (CLOCK_MONOTONIC marks
  the flow writes to a file), so interpreter and dataflow start-up, which the Wallaroo figure
  leaves out too, are out; the start-up and the whole process's wall time are printed
  beside. Bytewax reads a local file, while Wallaroo's window includes publishing the lines
  into JetStream: if anything, this favours Bytewax. Its sink writes each output line to a
  file without an fsync per batch, as JetStream (sync every 2 min by default) does not either.
- Memory: peak RSS of the runner and of nats-server during the Wallaroo throughput run, at
  `--words` and at `--memory-words` (10x by default), each in a fresh DevCluster, and the ratio
  big/small per process (aim <= 1.2: memory follows state, the vocabulary here, not the volume).
  A background thread reads VmRSS from /proc/<pid>/status every 0.5 s, and VmHWM (the kernel's
  own peak) at the end; the larger is printed. Bytewax's peak is the ru_maxrss of its process,
  from wait4(). The input goes as `wallaroo dev --input` sends it: at most `--max-backlog`
  batches (256 records each) ahead of the app, as Bytewax pulls its file at its own pace;
  `--max-backlog 0` sends it all at once (a 10M-word burst, 70 MB that nats-server caches).
- Latency: p50/p99 end to end at a steady input rate.

    python bench/wordcount.py [--words 1000000] [--memory-words 10000000] [--skip-10x]
                              [--max-backlog 256] [--skip-bytewax] [--rate 20000]
                              [--latency-seconds 10]
                              [--only-latency] [--latency-keys 0] [--latency-runners 1]
    quick: python bench/wordcount.py --words 100000 --memory-words 200000 --latency-seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

import wallaroo
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
APPS = ROOT / "bench" / "apps"
TOOLKIT = Path(wallaroo.__file__).resolve().parents[1]  # the example does `import wallaroo`
WORDS_PER_LINE = 10
WARM_UP = b"warm-up"  # the latency run's first record, not counted: its output says the reader reads
SAMPLE_EVERY = 0.5  # seconds between RSS samples
MIB = 1024  # /proc and ru_maxrss count KiB


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


async def throughput(url: str, key: Path, creds: Path, lines: list[bytes], words: int,
                     backlog: int = 0) -> float:
    nats = await Nats.connect(url, creds=creds)
    try:
        manifest = await apps.deploy(nats, APP, key=key)
        await apps.wait_idle(nats, manifest, timeout=60)  # workers up, consumers created
        start = time.perf_counter()
        with _progress(words) as shown:
            await ingest.send(nats, manifest, "lines", lines, "bench", progress=shown,
                              backlog=ingest.Backlog(backlog) if backlog else None)
        # Bounded, with room for a slow shared machine (10M words take ~100 s unloaded).
        await apps.wait_idle(nats, manifest, timeout=120 + words / 5_000, poll=0.1)
        return words / (time.perf_counter() - start)
    finally:
        await nats.close()


@contextlib.contextmanager
def _progress(total_words: int) -> Iterator[Callable[[int], None]]:
    """The send's progress on stderr (rich: a live bar on a terminal, one line in a log)."""
    columns = (TextColumn("  sent"), MofNCompleteColumn(), TextColumn("words"), BarColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("send", total=total_words)
        yield lambda lines_sent: bar.update(task, completed=lines_sent * WORDS_PER_LINE)


def proc_status_kib(pid: int, field: str) -> int | None:
    """A `VmRSS:  N kB`-style line of /proc/<pid>/status; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None  # the process has exited
    return None


class RssSampler:
    """Peak RSS (KiB) of some processes while a `with` block runs: VmRSS every SAMPLE_EVERY s
    from a background thread, then VmHWM, the kernel's own peak, which a sample may miss."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak_kib = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._take("VmHWM")  # before the cluster stops them: a dead process has no status

    def _sample(self) -> None:
        while True:
            self._take("VmRSS")
            if self._stop.wait(SAMPLE_EVERY):
                return

    def _take(self, field: str) -> None:
        for name, pid in self.pids.items():
            kib = proc_status_kib(pid, field)
            if kib is not None:
                self.peak_kib[name] = max(self.peak_kib[name], kib)


@dataclass(frozen=True)
class WallarooRun:
    words: int
    rate: float  # records/s
    peak_kib: dict[str, int]  # "wallaroo runner" / "nats-server" -> peak RSS


def wallaroo_run(lines: list[bytes], words: int, backlog: int = 0) -> WallarooRun:
    """The throughput run in a fresh one-runner DevCluster, the runner's and nats-server's
    memory sampled throughout (deploy included: VmHWM counts from process start anyway)."""
    with tempfile.TemporaryDirectory() as tmp, DevCluster(Path(tmp) / "c", runners=1) as cluster:
        pids = {"wallaroo runner": _pid(cluster.runners[0].proc),
                "nats-server": _pid(cluster.server.proc)}
        with RssSampler(pids) as rss:
            rate = asyncio.run(throughput(cluster.url, cluster.deploy_key, cluster.creds("deployer"),
                                          lines, words, backlog))
    return WallarooRun(words, rate, rss.peak_kib)


def _pid(proc: subprocess.Popen[bytes] | None) -> int:
    if proc is None:
        raise SystemExit("DevCluster started without a process to measure")
    return proc.pid


class BytewaxFailed(Exception):
    pass


@dataclass(frozen=True)
class BytewaxRun:
    rate: float  # records/s, from the source's first read to the sink's last write
    startup: float  # s, process launch to the first read
    wall: float  # s, process launch to exit
    peak_kib: int


def bytewax_run(lines: list[bytes], words: int, work: Path) -> BytewaxRun:
    """bench/apps/bytewax_wordcount.py over `lines`, 1 worker, SQLite recovery as bench/job.py."""
    inp, out, marks, recovery = (work / n for n in ("lines.txt", "out.txt", "marks.json", "recovery"))
    inp.write_bytes(b"\n".join(lines) + b"\n")
    recovery.mkdir()
    path = [str(APPS), str(TOOLKIT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "BENCH_WC_INPUT": str(inp), "BENCH_WC_OUTPUT": str(out),
           "BENCH_WC_TIMES": str(marks), "PYTHONPATH": os.pathsep.join(path)}
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], env=env,
                   check=True, capture_output=True, timeout=60)
    log = work / "bytewax.log"
    launched = time.monotonic()
    with log.open("wb") as log_f:
        proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "bytewax_wordcount:flow",
                                 "-r", str(recovery), "-s", "5", "-b", "0"], env=env,
                                stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT)
    code, peak_kib = wait_with_rusage(proc, timeout=60 + words / 5_000)
    wall = time.monotonic() - launched
    if code != 0:
        raise BytewaxFailed(f"exit code {code}:\n{log.read_text()[-2000:]}")
    m = json.loads(marks.read_text())
    if m["outputs"] != words:
        raise BytewaxFailed(f"{m['outputs']:,} outputs for {words:,} words")
    return BytewaxRun(m["outputs"] / (m["last"] - m["first"]), m["first"] - launched, wall, peak_kib)


def wait_with_rusage(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, int]:
    """Exit code and peak RSS (KiB) of `proc`, killed after `timeout` s. wait4() gives that one
    child's peak; RUSAGE_CHILDREN would mix in every child reaped so far (nats-server, runners)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
            return proc.returncode, usage.ru_maxrss
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)  # SIGKILLed: returns at once
            proc.returncode = -9
            raise BytewaxFailed(f"still running after {timeout:.0f} s; killed")
        time.sleep(0.05)


def maybe_bytewax(skip: bool, lines: list[bytes], words: int) -> BytewaxRun | None:
    """None, saying why, when skipped, not installed or failed: the other figures still count."""
    if skip or importlib.util.find_spec("bytewax") is None:
        why = "--skip-bytewax" if skip else "not importable; pip install -e '.[bench]'"
        print(f"bytewax: skipped ({why})")
        return None
    with tempfile.TemporaryDirectory(prefix="wl-bench-bw-") as tmp:
        try:
            return bytewax_run(lines, words, Path(tmp))
        except (BytewaxFailed, subprocess.SubprocessError) as e:
            print(f"bytewax: failed, left out: {e}")
            return None


async def latency(url: str, key: Path, creds: Path, rate: int, seconds: float, keys: int,
                  runners: int = 1) -> tuple[float, float, int]:
    """Record i is the word `w<i>` (a new key each: state grows with every record), or with
    `keys`, `w<i % keys>` (a fixed vocabulary, as the throughput run); its output
    `w<j> => <count>` names it, as a key's records are counted in order, exactly once."""
    nats = await Nats.connect(url, creds=creds)
    try:
        if runners > 1:  # deployed to all at once: no partition moves mid-run
            from wallaroo.local.runapp import wait_members  # noqa: PLC0415 - not in older checkouts

            await wait_members(nats, runners, 60)
        manifest = await apps.deploy(nats, APP, key=key)
        await apps.wait_idle(nats, manifest, timeout=60)  # steady state: workers up
        sent: list[float] = []  # by record number (a dict's resize stalled this process ~10 ms)
        lat: list[float] = []
        ready = asyncio.Event()
        reader = asyncio.create_task(_read_latencies(nats, manifest, sent, lat, keys, ready))
        # Why: the reader's consumer is created by its first read; records sent before it
        # exists were counted late by that, not by the pipeline (the first 0.1 s of a run).
        await nats.publish_all([Out(AppNames(manifest.slug).source(0, 0),
                                    codec.pack_batch([WARM_UP]), "i:lat:warm-up")])
        await asyncio.wait_for(ready.wait(), 60)
        await _paced_send(nats, manifest, rate, seconds, sent, keys)
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
                      sent: list[float], keys: int) -> None:
    tick = 0.005
    per_tick = max(1, int(rate * tick))
    names = AppNames(manifest.slug)
    start = time.monotonic()
    n = 0
    for t in range(int(seconds / tick)):
        await asyncio.sleep(max(0.0, start + t * tick - time.monotonic()))
        batch = [f"w{(n + i) % keys if keys else n + i}".encode() for i in range(per_tick)]
        now = time.monotonic()
        sent.extend([now] * per_tick)
        await nats.publish_all([Out(names.source(0, 0), codec.pack_batch(batch), f"i:lat:{t}")])
        n += per_tick


async def _read_latencies(nats: Nats, manifest: Manifest, sent: list[float],
                          lat: list[float], keys: int, ready: asyncio.Event) -> None:
    async for _, _, outs in outputs.tail(nats, manifest, None):
        now = time.monotonic()
        for out in outs:
            word, _, count = out.partition(b" => ")
            if word == WARM_UP:
                ready.set()
                continue
            j = int(word[1:])
            lat.append(now - sent[(int(count) - 1) * keys + j if keys else j])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--words", type=int, default=1_000_000, help="throughput run and bytewax")
    p.add_argument("--memory-words", type=int, default=None,
                   help="the big memory run (default: 10x --words)")
    p.add_argument("--skip-10x", action="store_true", help="no big memory run")
    p.add_argument("--max-backlog", type=int, default=ingest.INPUT_BACKLOG,
                   help="batches the sender may run ahead of the app, as `wallaroo dev --input` "
                   "(default); 0: the whole input at once")
    p.add_argument("--skip-bytewax", action="store_true")
    p.add_argument("--rate", type=int, default=20_000, help="records/s for the latency run")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--latency-runners", type=int, default=1,
                   help="runner processes of the latency run (the others use one)")
    p.add_argument("--latency-keys", type=int, default=0,
                   help="distinct words in the latency run (default 0: every record a new word)")
    p.add_argument("--only-latency", action="store_true",
                   help="the latency run alone (no throughput, memory or bytewax runs)")
    args = p.parse_args()
    args.memory_words = args.memory_words or 10 * args.words
    return args


def throughput_table(base: float, ours: WallarooRun, bw: BytewaxRun | None) -> Table:
    t = Table(title=f"throughput over {ours.words:,} words")
    for col in ("run", "records/s", "wallaroo / this"):
        t.add_column(col, justify="left" if col == "run" else "right")
    t.add_row("wallaroo, 1 runner, exactly-once", f"{ours.rate:,.0f}", "")
    t.add_row("plain python loop", f"{base:,.0f}", f"{ours.rate / base:.3f} (aim >= 0.25)")
    if bw is not None:
        t.add_row("bytewax 0.21, 1 worker, recovery", f"{bw.rate:,.0f}", f"{ours.rate / bw.rate:.3f}")
    return t


def memory_table(small: WallarooRun, big: WallarooRun | None, bw: BytewaxRun | None,
                 backlog: int) -> Table:
    """Runner and nats-server side by side at both sizes; Bytewax's process at the small one."""
    rates = ", ".join(f"{r.words:,} words {r.rate:,.0f}" for r in (small, big) if r is not None)
    sent = f"at most {backlog} batches ahead of the app" if backlog else "all at once"
    t = Table(title="peak RSS, MiB", caption=f"aim: big / small <= 1.2\nwallaroo records/s: {rates}"
              f"\ninput sent {sent} (--max-backlog)")
    t.add_column("process")
    t.add_column(f"{small.words:,} words", justify="right")
    if big is not None:
        t.add_column(f"{big.words:,} words", justify="right")
        t.add_column("big / small", justify="right")
    for name, kib in small.peak_kib.items():
        row = [name, f"{kib / MIB:,.0f}"]
        if big is not None:
            row += [f"{big.peak_kib[name] / MIB:,.0f}", f"{big.peak_kib[name] / kib:.2f}"]
        t.add_row(*row)
    if bw is not None:
        t.add_row("bytewax", f"{bw.peak_kib / MIB:,.0f}", *(["", ""] if big else []))
    return t


def main() -> None:
    args = parse_args()
    console = Console()
    if not args.only_latency:
        throughput_and_memory(args, console)
    latency_run(args, console)


def throughput_and_memory(args: argparse.Namespace, console: Console) -> None:
    lines = make_lines(args.words)
    base = plain_loop(lines)
    small = wallaroo_run(lines, args.words, args.max_backlog)
    bw = maybe_bytewax(args.skip_bytewax, lines, args.words)
    console.print(throughput_table(base, small, bw))
    if bw is not None:
        console.print(f"bytewax: start-up {bw.startup:.2f} s (launch to first read), "
                      f"whole process {bw.wall:.2f} s")
    big = (None if args.skip_10x
           else wallaroo_run(make_lines(args.memory_words), args.memory_words, args.max_backlog))
    console.print(memory_table(small, big, bw, args.max_backlog))


def latency_run(args: argparse.Namespace, console: Console) -> None:
    runners = args.latency_runners
    with tempfile.TemporaryDirectory() as tmp, DevCluster(Path(tmp) / "c", runners=runners) as cluster:
        p50, p99, n = asyncio.run(latency(cluster.url, cluster.deploy_key, cluster.creds("deployer"),
                                          args.rate, args.latency_seconds, args.latency_keys,
                                          runners))
    words = f"{args.latency_keys:,} words" if args.latency_keys else "a new word each"
    on = f", {runners} runners" if runners > 1 else ""
    console.print(f"latency at {args.rate:,} records/s over {n:,} records ({words}{on}): "
                  f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms", soft_wrap=True)


if __name__ == "__main__":
    main()
