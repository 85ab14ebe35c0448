"""A keyed counter whose per-key state carries 8 KiB: a few hundred keys hold more state than
one NATS message, so moving it to other partitions takes several commit records. The
partition count is the first argument (`wallaroo deploy heavy_counter.py -- 3`)."""

import wallaroo

PAD = 8192


def application_setup(args):
    partitions = int(args[0]) if args else 2
    pipeline = (
        wallaroo.source("words", wallaroo.StreamSource(decoder=decode))
        .key_by(word)
        .to(count)
        .to_sink(wallaroo.StreamSink("counts", encoder=encode))
    )
    return wallaroo.build_application("heavy", pipeline, partitions=partitions)


@wallaroo.decoder
def decode(bs):
    return bs.decode()


@wallaroo.key_extractor
def word(w):
    return w


class Heavy:
    def __init__(self):
        self.n = 0
        self.pad = bytes(PAD)


@wallaroo.state_computation(name="count", state=Heavy)
def count(w, heavy):
    heavy.n += 1
    return f"{w} => {heavy.n}"


@wallaroo.encoder
def encode(line):
    return line + "\n"
