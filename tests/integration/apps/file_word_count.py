"""Word count from a file to a file: a FileSource (path in $WC_INPUT) and a FileSink (path in
$WC_OUTPUT), both exactly-once across runner crashes."""

import os

import wallaroo as wl


@wl.computation_multi(name="split")
def split(line: str) -> list[str]:
    return line.split()


@wl.key_extractor
def word(w: str) -> str:
    return w


class Count:
    def __init__(self) -> None:
        self.n = 0


@wl.state_computation(name="count", state=Count)
def count(w: str, c: Count) -> str:
    c.n += 1
    return f"{w} => {c.n}"


def application_setup(args: list[str]) -> wl.Application:
    lines = wl.source("lines", wl.FileSource(os.environ["WC_INPUT"], decoder=bytes.decode))
    pipeline = (lines.to(split).key_by(word).to(count)
                .to_sink(wl.FileSink("counts", os.environ["WC_OUTPUT"])))
    return wl.build_application("file_word_count", pipeline)
