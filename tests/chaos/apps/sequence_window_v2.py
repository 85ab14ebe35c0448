"""Version 2 of tests/chaos/apps/sequence_window.py, deployed over it mid-stream: the same app
name, stages, state and output format; only the code that slides the window differs (it
drops the oldest value in place instead of slicing a new list). A correct upgrade keeps each
key's window, so the output still reads as one unbroken sequence per key."""

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
    key, _, value = bs.decode("utf-8").partition(",")
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
    window.values.append(value)
    while len(window.values) > WIDTH:
        window.values.pop(0)
    return key, list(window.values)


@wallaroo.encoder
def encode(key_window):
    key, values = key_window
    return key + ":[" + ",".join(str(v) for v in values) + "]\n"
