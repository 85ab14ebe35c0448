"""A micro-batch step in a source stage (whose input clients write): batches of three words,
or whatever waited ten minutes. One partition, so every word joins the same batch."""

from __future__ import annotations

import wallaroo as wl


@wl.decoder
def text(data: bytes) -> str:
    return data.decode()


@wl.batch_computation(name="trios", max_size=3, max_wait=600.0)
def trios(words: list[str]) -> list[str]:
    return [",".join(words)]


pipeline = (wl.source("words", wl.StreamSource(decoder=text)).to(trios)
            .to_sink(wl.StreamSink("trios", encoder=lambda s: s + "\n")))
app = wl.build_application("source_batches", pipeline, partitions=1)
