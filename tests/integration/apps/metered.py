"""An app with a stream (lines -> words -> a count per word, two partitions) and a function:
what the metrics tests count."""

from __future__ import annotations

import wallaroo

app = wallaroo.App("metered")


@app.function()
def double(x: int) -> int:
    return 2 * x


class Total:
    def __init__(self) -> None:
        self.count = 0


@wallaroo.computation_multi(name="split")
def split(line: str) -> list[str]:
    return line.split()


@wallaroo.key_extractor
def word(w: str) -> str:
    return w


@wallaroo.state_computation(name="count", state=Total)
def count(w: str, total: Total) -> str:
    total.count += 1
    return f"{w} {total.count}"


app.attach(
    wallaroo.source("lines", wallaroo.StreamSource(decoder=lambda b: b.decode()))
    .to(split).key_by(word).to(count)
    .to_sink(wallaroo.StreamSink("counts", encoder=lambda s: s + "\n")),
    partitions=2,
)
