"""Word count (examples/word_count semantics) with a partitioned source, so every stage can
spread over several runners. Deploy args (bench/scaling.py passes them to `apps.deploy`):
`--partitions N` for the keyed stage (default 8), `--source-partitions M` for the source stage
(default 4). Partition counts are fixed at an app's first deploy, so the app name carries N:
each count is its own app."""

import argparse

import wallaroo

PUNCTUATION = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


@wallaroo.computation_multi(name="split into words")
def split(data):
    return [w.strip(PUNCTUATION) for w in data.lower().strip(PUNCTUATION).split(" ")]


@wallaroo.key_extractor
def extract_word(word):
    return word


class WordTotal:
    def __init__(self):
        self.count = 0


@wallaroo.state_computation(name="count word", state=WordTotal)
def count_word(word, total):
    total.count += 1
    return f"{word} => {total.count}\n"


@wallaroo.decoder
def decode_line(bs):
    return bs.decode("utf-8")


def application_setup(args):
    p = argparse.ArgumentParser(prog="parallel_word_count")
    p.add_argument("--partitions", type=int, default=8, help="keyed stage")
    p.add_argument("--source-partitions", type=int, default=4)
    opts = p.parse_args(args)
    source = wallaroo.StreamSource(decoder=decode_line, partitions=opts.source_partitions)
    return wallaroo.build_application(
        f"parallel_word_count_{opts.partitions}",
        wallaroo.source("lines", source).to(split).key_by(extract_word).to(count_word)
        .to_sink(wallaroo.StreamSink("counts")),
        partitions=opts.partitions,
    )
