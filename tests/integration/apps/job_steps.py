"""Steps the job test apps share (word_job, parts_job, s3_job): shipped by value with each, as
a module of the app's folder."""

from __future__ import annotations

import wallaroo as wl


@wl.computation_multi(name="split")
def split(text: str) -> list[str]:
    return text.split()


@wl.key_extractor
def word(w: str) -> str:
    return w


class Seen:
    n = 0


def running_count(suffix: str = "") -> object:
    """A step writing "word => n" for the n-th time a word is seen (then `suffix`)."""

    @wl.state_computation(name="running count", state=Seen)
    def running(w: str, seen: Seen) -> str:
        seen.n += 1
        return f"{w} => {seen.n}{suffix}"

    return running


class Total(wl.Aggregation):
    """Records per key: with global_windows, one total per word at end of input."""

    def initial_accumulator(self) -> int:
        return 0

    def update(self, record: str, total: int) -> int:
        return total + 1

    def combine(self, a: int, b: int) -> int:
        return a + b

    def output(self, key: str, total: int) -> str:
        return f"{key} {total}"


def totals() -> object:
    return wl.global_windows().over(Total)
