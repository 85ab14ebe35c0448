"""Sequence window, the app Wallaroo's correctness suite ran under chaos.

Input: text records "key,value", where each key's values are 1, 2, 3, ... sent in order.
Keyed by key, a state computation keeps the key's last 4 values and emits the window as
"key:[v1,v2,v3,v4]", oldest first. A key's first windows are shorter ("k7:[1]", "k7:[1,2]",
"k7:[1,2,3]"), then every window is the previous one shifted by one value ("k7:[1,2,3,4]",
"k7:[2,3,4,5]", ...). So each output line says exactly which values its key's state held: a
lost, repeated or reordered record, or lost state, shows as a window that is not the
previous one shifted by one (tests/chaos/sequence_validator.py checks that).
"""

import wallaroo

WIDTH = 4
PARTITIONS = 8


def application_setup(args):
    pipeline = (
        wallaroo.source("values", wallaroo.StreamSource(decoder=decode))
        .key_by(key_of)
        .to(observe)
        .to_sink(wallaroo.StreamSink("windows", encoder=encode))
    )
    return wallaroo.build_application("sequence_window", pipeline, partitions=PARTITIONS)


@wallaroo.decoder
def decode(bs):
    key, value = bs.decode("utf-8").split(",")
    return key, int(value)


@wallaroo.key_extractor
def key_of(record):
    return record[0]


class Window:
    def __init__(self):
        self.values = []


@wallaroo.state_computation(name="observe", state=Window)
def observe(record, window):
    key, value = record
    window.values = (window.values + [value])[-WIDTH:]
    return key, list(window.values)


@wallaroo.encoder
def encode(key_window):
    key, values = key_window
    return f"{key}:[{','.join(map(str, values))}]\n"
