"""A Wallaroo 0.6-style app over a framed binary file: each record is a 4-byte big-endian
length, then one float packed as struct ">d"; the decoder gets the 8 payload bytes."""

import struct

import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    (value,) = struct.unpack(">d", bs)
    return value


@wallaroo.computation(name="half")
def half(value):
    return value / 2


@wallaroo.encoder
def encode(value):
    return repr(value)


def application_setup(args):
    pipeline = (wallaroo.source("floats", wallaroo.StreamSource(decoder=decode))
                .to(half)
                .to_sink(wallaroo.StreamSink("halves", encoder=encode)))
    return wallaroo.build_application("framed_floats", pipeline)
