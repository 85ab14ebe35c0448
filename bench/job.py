"""A bounded word count over a file (>= 10M words by default), end to end, three ways in the
same run, each from process start to exit, with the same user functions (bench/apps/words.py):

- `wallaroo run bench/apps/job_words.py --fresh` (embedded nats-server and one runner,
  exactly-once: every commit in JetStream, resumable after a crash);
- `python -m bytewax.run` of bench/apps/bytewax_words.py, 1 worker, recovery on (SQLite,
  snapshot every 5 s), the Bytewax setting closest to ours (`pip install -e '.[bench]'`);
- the plain Python loop (no durability at all).

Prints words/s of each and the ratios; checks the three outputs are the same totals; prints
where Wallaroo's wall time goes (start-up, the job itself, shutdown) from its own log lines.

`--runners N` runs Wallaroo with N runner processes and the file source split into N
partitions (each runner reads and splits its share): a 2-core machine's second core, which
one runner leaves to nats-server. Bytewax stays at 1 worker: its FileSource is one partition,
read by one worker, and its workers are threads of one process (`-w`), so more of them would
not split the Python work of this flow.

    python bench/job.py [--words 10000000] [--runners 1] [--skip-bytewax]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "bench" / "apps"
sys.path.insert(0, str(APPS))
import words  # noqa: E402

WORDS_PER_LINE = 10


def make_input(path: Path, n_words: int, seed: int = 7) -> None:
    vocab = sorted({w.strip(".,;:()").lower() for w in
                    (ROOT / "examples" / "word_count" / "count_this.txt").read_text().split()} - {""})
    rng = random.Random(seed)
    with path.open("w") as f:
        for start in range(0, n_words, WORDS_PER_LINE):
            f.write(" ".join(rng.choices(vocab, k=min(WORDS_PER_LINE, n_words - start))) + "\n")


def plain_loop(path: Path) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    totals: dict[str, int] = {}
    with path.open() as f:
        for text in f:
            for w in words.split(text):
                key = words.word(w)
                totals[key] = words.add(totals.get(key, 0), 1)
    lines = [words.line(k, v) for k, v in totals.items()]
    return time.perf_counter() - started, _parse(lines)


def _parse(lines: list[str]) -> dict[str, int]:
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in lines if line.strip())}


def run_wallaroo(path: Path, work: Path, runners: int) -> tuple[float, dict[str, int], str]:
    out = work / f"wallaroo-{runners}.txt"
    env = {**os.environ, "BENCH_JOB_INPUT": str(path), "BENCH_JOB_OUTPUT": str(out),
           "BENCH_JOB_SOURCE_PARTITIONS": str(runners)}
    for k in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR"):
        env.pop(k, None)
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "wallaroo", "run", str(APPS / "job_words.py"),
                          "--fresh", "--runners", str(runners),
                          "--state-dir", str(work / f"state-{runners}")], env=env, cwd=work,
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        raise SystemExit(f"wallaroo run failed ({res.returncode}):\n{res.stderr}")
    return wall, _parse(out.read_text().splitlines()), res.stderr


def run_bytewax(path: Path, work: Path) -> tuple[float, dict[str, int]]:
    out, recovery = work / "bytewax.txt", work / "recovery"
    recovery.mkdir()
    env = {**os.environ, "BENCH_JOB_INPUT": str(path), "BENCH_JOB_OUTPUT": str(out),
           "PYTHONPATH": str(APPS)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], env=env,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "bytewax.run", "bytewax_words:flow", "-r", str(recovery),
                    "-s", "5", "-b", "0"], env=env, check=True, capture_output=True)
    return time.perf_counter() - started, _parse(out.read_text().splitlines())


def phases(stderr: str) -> str:
    """Start-up and job time from `wallaroo run`'s own lines."""
    done = re.search(r"done in ([\d.]+)s", stderr)
    return f"job {done.group(1)} s (deploy to finished)" if done else "no summary line"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=10_000_000)
    parser.add_argument("--runners", type=int, default=1)
    parser.add_argument("--skip-bytewax", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wl-bench-job-") as tmp:
        work = Path(tmp)
        path = work / "words.txt"
        make_input(path, args.words)
        print(f"input: {args.words:,} words, {path.stat().st_size / 2**20:.1f} MiB")
        loop_s, expected = plain_loop(path)
        print(f"plain loop      {loop_s:7.2f} s  {args.words / loop_s:12,.0f} words/s")
        ours_s, ours, stderr = run_wallaroo(path, work, args.runners)
        print(f"wallaroo run    {ours_s:7.2f} s  {args.words / ours_s:12,.0f} words/s  "
              f"({args.runners} runner(s); {phases(stderr)})")
        assert ours == expected, "wallaroo's totals differ from the plain loop's"
        if not args.skip_bytewax:
            bw_s, bw = run_bytewax(path, work)
            print(f"bytewax.run     {bw_s:7.2f} s  {args.words / bw_s:12,.0f} words/s")
            assert bw == expected, "bytewax's totals differ from the plain loop's"
            print(f"wallaroo / bytewax (throughput): {bw_s / ours_s:.2f}  (aim >= 1.0)")
        print(f"wallaroo / plain loop (throughput): {loop_s / ours_s:.2f}")
        print(f"{len(collections.Counter(expected))} distinct words; outputs identical")


if __name__ == "__main__":
    main()
