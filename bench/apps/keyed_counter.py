"""Counts records per key, all keys in ONE partition: the worst case for restoring state."""

import wallaroo


@wallaroo.key_extractor
def key(text):
    return text


class Count:
    def __init__(self):
        self.n = 0


@wallaroo.state_computation(name="count", state=Count)
def count(text, state):
    state.n += 1
    return f"{text}={state.n}"


app = wallaroo.build_application(
    "keyed_counter",
    wallaroo.source("in", wallaroo.StreamSource()).key_by(key).to(count)
    .to_sink(wallaroo.StreamSink("out")),
    partitions=1,
)
