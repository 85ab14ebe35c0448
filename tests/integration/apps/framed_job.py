"""A job over a framed binary file (`wallaroo run`): a bounded FileSource whose decoder
declares Wallaroo's framing; each payload is one ">d" float. Paths from the environment of
the deploying process: FRAMED_INPUT, FRAMED_OUTPUT."""

import os
import struct

import wallaroo as wl


@wl.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return struct.unpack(">d", bs)[0]


@wl.computation(name="half")
def half(value):
    return value / 2


pipeline = (wl.source("floats", wl.FileSource(os.environ["FRAMED_INPUT"], decoder=decode,
                                               bounded=True))
            .to(half)
            .to_sink(wl.FileSink("halves", os.environ["FRAMED_OUTPUT"], encoder=repr)))
app = wl.build_application("framed_job", pipeline)
