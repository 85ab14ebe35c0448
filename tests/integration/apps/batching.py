"""Micro-batches on a runner: words keyed by their first letter, batched per key (max 3, or
half a second after a batch's first word), each batch one output "<letter>: w1,w2"."""

from __future__ import annotations

import wallaroo as wl


@wl.decoder
def text(data: bytes) -> str:
    return data.decode()


@wl.key_extractor
def letter(word: str) -> str:
    return word[0]


class Batches:
    n = 0


@wl.state_batch_computation(name="by letter", state=Batches, max_size=3, max_wait=0.5)
def by_letter(words: list[str], seen: Batches) -> list[str]:
    seen.n += 1
    return [f"{words[0][0]} #{seen.n}: {','.join(words)}"]


pipeline = (wl.source("words", wl.StreamSource(decoder=text)).key_by(letter).to(by_letter)
            .to_sink(wl.StreamSink("batches", encoder=lambda s: s + "\n")))
app = wl.build_application("batching", pipeline, partitions=2)
