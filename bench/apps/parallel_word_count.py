"""Word count (examples/word_count semantics) with a 4-partition source, so every stage can
spread over several runners."""

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


app = wallaroo.build_application(
    "parallel_word_count",
    wallaroo.source("lines", wallaroo.StreamSource(decoder=decode_line, partitions=4))
    .to(split).key_by(extract_word).to(count_word)
    .to_sink(wallaroo.StreamSink("counts")),
)
