"""The user functions of the job benchmark, the same for Wallaroo, Bytewax and the plain loop."""

from __future__ import annotations


def split(line: str) -> list[str]:
    return line.split()


def word(w: str) -> str:
    return w


def add(a: int, b: int) -> int:
    return a + b


def line(key: str, total: int) -> str:
    return f"{key} {total}"
