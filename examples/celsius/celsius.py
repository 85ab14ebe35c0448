"""Celsius to Fahrenheit, ported from Wallaroo 0.6's examples/python/celsius
(WallarooLabs/wallaroo, Apache-2.0).

Each record is one Celsius temperature as text (Wallaroo's original read a big-endian 32-bit
float); two stateless steps multiply it by 1.8 and then add 32, and each Fahrenheit value is
written as "%.6f", one per line.
"""

import wallaroo


def application_setup(args):
    celsius = wallaroo.source("celsius", wallaroo.StreamSource(decoder=decode_celsius))
    pipeline = (
        celsius.to(multiply)
        .to(add)
        .to_sink(wallaroo.StreamSink("fahrenheit", encoder=encode_fahrenheit))
    )
    return wallaroo.build_application("celsius", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_celsius(bs):
    return float(bs.decode("utf-8"))


@wallaroo.computation(name="multiply by 1.8")
def multiply(data):
    return data * 1.8


@wallaroo.computation(name="add 32")
def add(data):
    return data + 32


@wallaroo.encoder
def encode_fahrenheit(data):
    return f"{data:.6f}\n"
