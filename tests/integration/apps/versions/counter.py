"""A keyed word counter whose output format and partition count are parameters: the
versions of one app that the rollback tests deploy (counter_v1, counter_v2, counter_wide)."""

import wallaroo as wl


@wl.decoder
def text(data: bytes) -> str:
    return data.decode()


@wl.key_extractor
def word(w: str) -> str:
    return w


class Count:
    def __init__(self) -> None:
        self.n = 0


def build(fmt: str, partitions: int = 2) -> wl.Application:
    @wl.state_computation(name="count", state=Count)
    def count(w: str, c: Count) -> str:
        c.n += 1
        return fmt.format(word=w, n=c.n)

    pipeline = (wl.source("words", wl.StreamSource(decoder=text)).key_by(word).to(count)
                .to_sink(wl.StreamSink("counts")))
    return wl.build_application("counter", pipeline, partitions=partitions)
