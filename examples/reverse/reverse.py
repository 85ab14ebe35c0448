"""Reverse, ported from Wallaroo 0.6's examples/python/reverse (WallarooLabs/wallaroo,
Apache-2.0).

Each record is a UTF-8 string; one stateless step reverses it (code point by code point) and
the reversed string is written, one per line.
"""

import wallaroo


def application_setup(args):
    words = wallaroo.source("words", wallaroo.StreamSource(decoder=decoder))
    pipeline = words.to(reverse).to_sink(wallaroo.StreamSink("reversed", encoder=encoder))
    return wallaroo.build_application("reverse", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.computation(name="reverse")
def reverse(data):
    return data[::-1]


@wallaroo.encoder
def encoder(data):
    return (data + "\n").encode()
