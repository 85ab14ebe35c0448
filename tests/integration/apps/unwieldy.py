"""Test app whose outputs can misbehave: "lock" becomes an object pickle cannot serialize,
"big" becomes an output larger than any commit can hold; everything else passes through."""

import threading

import wallaroo as wl

BIG = 20 * 1024 * 1024  # over the embedded server's 8 MiB max payload


@wl.computation(name="shape")
def shape(text: str) -> object:
    if text == "lock":
        return threading.Lock()
    if text == "big":
        return "x" * BIG
    return text


@wl.key_extractor
def first_letter(value: object) -> str:
    return str(value)[:1]


@wl.computation(name="echo")
def echo(value: object) -> str:
    return str(value)


app = wl.build_application(
    "unwieldy",
    wl.source("in", wl.StreamSource()).to(shape).key_by(first_letter).to(echo)
    .to_sink(wl.StreamSink("out")),
    partitions=2,
)
