"""Word count, ported from Wallaroo 0.6's examples/python/word_count: only the source and sink
lines changed. Each line is split into words; each word's running count is emitted."""

import wallaroo

PUNCTUATION = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def application_setup(args):
    lines = wallaroo.source("lines", wallaroo.StreamSource(decoder=decode_line))
    pipeline = (
        lines.to(split)
        .key_by(extract_word)
        .to(count_word)
        .to_sink(wallaroo.StreamSink("counts", encoder=encode_word_count))
    )
    return wallaroo.build_application("word_count", pipeline)


@wallaroo.computation_multi(name="split into words")
def split(data):
    words = []
    for line in data.split("\n"):
        clean_line = line.lower().strip(PUNCTUATION)
        for word in clean_line.split(" "):
            words.append(word.strip(PUNCTUATION))
    return words


class WordTotal:
    def __init__(self):
        self.count = 0


class WordCount:
    def __init__(self, word, count):
        self.word = word
        self.count = count


@wallaroo.key_extractor
def extract_word(word):
    return word


@wallaroo.state_computation(name="count word", state=WordTotal)
def count_word(word, word_total):
    word_total.count = word_total.count + 1
    return WordCount(word, word_total.count)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_line(bs):
    return bs.decode("utf-8")


@wallaroo.encoder
def encode_word_count(word_count):
    return word_count.word + " => " + str(word_count.count) + "\n"
