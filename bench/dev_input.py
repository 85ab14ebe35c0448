"""The whole `wallaroo dev examples/word_count/word_count.py --input FILE` path against
`python -m bytewax.run` of the same word count (bench/apps/bytewax_wordcount.py: the example's
own functions, a running count per word, 1 worker, SQLite recovery snapshotting every 5 s) on
the same file, each a whole process from launch to exit, in the same run.

First start-up, the median of `--starts` runs of each on a one-line file: for Wallaroo the
line "deployed" (the cluster takes records), the first output printed (a runner runs the app)
and the exit; for Bytewax its dataflow's first read (start-up) and its exit. Then both over
`--words` words (10M; lines of 10 words from examples/word_count/count_this.txt's vocabulary,
as bench/job.py makes them): wall time, words/s and the ratio (aim: Wallaroo / Bytewax <= 1.0),
after checking that both printed one output per word and the same final count per word as
counting the file here. Wallaroo's wall time is split at its own stderr lines (deployed, all
sent, done, exit).

Why a script of its own and not a mode of bench/job.py: that one times `wallaroo run` of a
bounded job (outputs are totals written to part files); this one times what `dev --input`
does (a stream app, every running count printed on stdout).

    python bench/dev_input.py [--words 10000000] [--starts 3] [--max-backlog N]
    quick: --words 200000

`--python PATH`: the interpreter whose `wallaroo` is timed (say, another checkout's venv, to
compare two versions in one run); bytewax runs with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import wallaroo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from job import make_input  # noqa: E402 - bench/ is not a package

APP = ROOT / "examples" / "word_count" / "word_count.py"
APPS = ROOT / "bench" / "apps"
TOOLKIT = Path(wallaroo.__file__).resolve().parents[1]  # the example does `import wallaroo`
# dev's stderr lines, in order, that split its wall time (progress lines say "sent N of M")
MARKS = {"deployed": re.compile(r"wallaroo: deployed "),
         "sent": re.compile(r"wallaroo: sent \d+ records from "),
         "done": re.compile(r"wallaroo: done: ")}


@dataclass
class DevRun:
    """Seconds from launch: when each of dev's stderr MARKS came, the first output, the exit."""

    marks: dict[str, float] = field(default_factory=dict)
    first_output: float | None = None
    wall: float = 0.0
    stderr: list[str] = field(default_factory=list)


def run_dev(input_file: Path, out: Path, work: Path, python: str,
            dev_args: Sequence[str] = ()) -> DevRun:
    """`wallaroo dev APP --input input_file --fresh`, its stdout (the outputs) into `out`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}
    run = DevRun()
    launched = time.monotonic()
    with out.open("wb") as out_f:
        proc = subprocess.Popen(
            [python, "-m", "wallaroo", "dev", str(APP), "--input", str(input_file),
             "--fresh", "--state-dir", str(work / "dev-state"), *dev_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
            cwd=work)
        assert proc.stdout is not None and proc.stderr is not None
        copier = threading.Thread(target=_copy_outputs, args=(proc.stdout, out_f, run, launched))
        copier.start()
        for line in proc.stderr:
            _mark(run, line.decode(errors="replace"), time.monotonic() - launched)
        code = proc.wait()
        copier.join()
    run.wall = time.monotonic() - launched
    if code != 0:
        raise SystemExit(f"wallaroo dev failed ({code}):\n{''.join(run.stderr[-20:])}")
    return run


def _mark(run: DevRun, line: str, at: float) -> None:
    run.stderr.append(line)
    for name, pattern in MARKS.items():
        if name not in run.marks and pattern.match(line):
            run.marks[name] = at


def _copy_outputs(src: IO[bytes], dst: IO[bytes], run: DevRun, launched: float) -> None:
    """Outputs from dev's stdout into a file, noting when the first came."""
    first = src.readline()
    if first:
        run.first_output = time.monotonic() - launched
        dst.write(first)
    while block := src.read(1 << 20):
        dst.write(block)


def run_bytewax(input_file: Path, out: Path, work: Path) -> tuple[float, float]:
    """(start-up, wall) seconds of bytewax_wordcount over `input_file`, outputs into `out`:
    start-up is launch to its dataflow's first read (its own mark, see the app)."""
    marks, recovery = work / "bytewax-marks.json", work / "bytewax-recovery"
    recovery.mkdir()
    path = [str(APPS), str(TOOLKIT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "BENCH_WC_INPUT": str(input_file), "BENCH_WC_OUTPUT": str(out),
           "BENCH_WC_TIMES": str(marks), "PYTHONPATH": os.pathsep.join(path)}
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], env=env,
                   check=True, capture_output=True)
    launched = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "bytewax.run", "bytewax_wordcount:flow",
                          "-r", str(recovery), "-s", "5", "-b", "0"], env=env, capture_output=True,
                         text=True, check=False)
    wall = time.monotonic() - launched
    if res.returncode != 0:
        raise SystemExit(f"bytewax failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return json.loads(marks.read_text())["first"] - launched, wall


def final_counts(out: Path) -> tuple[int, dict[str, int]]:
    """(outputs, each word's last count) from lines `word => n`."""
    last: dict[str, int] = {}
    n = 0
    with out.open("rb") as f:
        for line in f:
            word, count = line.rstrip(b"\n").rsplit(b" => ", 1)
            last[word.decode()] = max(last.get(word.decode(), 0), int(count))
            n += 1
    return n, last


def check_same(expected: Counter[str], words: int, name: str, out: Path) -> None:
    outputs, last = final_counts(out)
    if outputs != words or last != dict(expected):
        raise SystemExit(f"{name}: {outputs:,} outputs for {words:,} words, or other final "
                         f"counts than the input's ({len(last)} words against {len(expected)})")


def startups(n: int, work: Path, python: str) -> None:
    one = work / "one-line.txt"
    make_input(one, 10)
    devs = [run_dev(one, work / f"dev-start-{i}.txt", _fresh(work, f"dev-start-{i}"), python)
            for i in range(n)]
    bws = [run_bytewax(one, work / f"bw-start-{i}.txt", _fresh(work, f"bw-start-{i}"))
           for i in range(n)]
    deployed = statistics.median(r.marks["deployed"] for r in devs)
    first = statistics.median(r.first_output or 0.0 for r in devs)
    bw_start = statistics.median(s for s, _ in bws)
    print(f"start-up, median of {n} (one-line input):")
    print(f"  wallaroo dev: deployed {deployed:5.2f} s (aim <= 0.5), first output {first:5.2f} s, "
          f"exit {statistics.median(r.wall for r in devs):5.2f} s")
    print(f"  bytewax.run:  first read {bw_start:5.2f} s, "
          f"exit {statistics.median(w for _, w in bws):5.2f} s")
    print(f"  ratio wallaroo deployed / bytewax first read: {deployed / bw_start:.2f}; "
          f"first output / first read: {first / bw_start:.2f}")


def _fresh(work: Path, name: str) -> Path:
    folder = work / name
    folder.mkdir()
    return folder


def whole(words: int, work: Path, python: str, dev_args: Sequence[str]) -> None:
    data = work / "words.txt"
    make_input(data, words)
    expected = Counter(data.read_text().split())
    print(f"\nwhole process, {words:,} words ({data.stat().st_size / 2**20:.1f} MiB, "
          f"{len(expected)} distinct):")
    dev = run_dev(data, work / "dev-out.txt", _fresh(work, "dev-whole"), python, dev_args)
    check_same(expected, words, "wallaroo dev", work / "dev-out.txt")
    _, bw_wall = run_bytewax(data, work / "bw-out.txt", _fresh(work, "bw-whole"))
    check_same(expected, words, "bytewax", work / "bw-out.txt")
    print(f"  wallaroo dev --input {dev.wall:7.2f} s {words / dev.wall:12,.0f} words/s  "
          f"({_phases(dev)})")
    print(f"  bytewax.run          {bw_wall:7.2f} s {words / bw_wall:12,.0f} words/s")
    print(f"  outputs agree (one per word, same final counts); wall ratio wallaroo / bytewax: "
          f"{dev.wall / bw_wall:.2f} (aim <= 1.0)")


def _phases(run: DevRun) -> str:
    """Wallaroo's wall time split at its own lines."""
    points = [("start-up", run.marks.get("deployed")), ("sending", run.marks.get("sent")),
              ("processing", run.marks.get("done")), ("shutdown", run.wall)]
    parts, before = [], 0.0
    for name, at in points:
        if at is not None:
            parts.append(f"{name} {at - before:.2f}")
            before = at
    return ", ".join(parts) + " s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=10_000_000)
    parser.add_argument("--starts", type=int, default=3, help="start-up runs of each (median)")
    parser.add_argument("--python", default=sys.executable, help="whose `wallaroo` to time")
    parser.add_argument("--max-backlog", type=int, default=None,
                        help="passed to `wallaroo dev` for the whole run (default: dev's own)")
    args = parser.parse_args()
    dev_args = [] if args.max_backlog is None else ["--max-backlog", str(args.max_backlog)]
    with tempfile.TemporaryDirectory(prefix="wl-bench-dev-") as tmp:
        startups(args.starts, Path(tmp), args.python)
        whole(args.words, Path(tmp), args.python, dev_args)


if __name__ == "__main__":
    main()
