"""Writes a day of web-service logs to logs/ (one file per service, deterministic), the input
of log_job.py:

    python examples/log_job/generate.py [--lines N]

Each line: "<ISO time> <service> <level> <latency ms> <message>", e.g.
"2026-12-01T09:15:02Z checkout ERROR 812 payment declined"."""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

SERVICES = ["checkout", "search", "auth", "images"]
LEVELS = [("INFO", 90), ("WARN", 7), ("ERROR", 3)]
MESSAGES = {"INFO": "ok", "WARN": "slow upstream", "ERROR": "upstream failed"}
START = datetime(2026, 12, 1, tzinfo=UTC)


def lines(service: str, n: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(n):
        at = START + timedelta(seconds=i * 86_400 / n + rng.random())
        level = rng.choices([lv for lv, _ in LEVELS], [w for _, w in LEVELS])[0]
        out.append(f"{at:%Y-%m-%dT%H:%M:%SZ} {service} {level} {rng.randint(2, 900)} {MESSAGES[level]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000, help="lines per service")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "logs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2026)
    for service in SERVICES:
        (args.out / f"{service}.log").write_text("\n".join(lines(service, args.lines, rng)) + "\n")
    print(f"wrote {len(SERVICES)} x {args.lines} lines to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
