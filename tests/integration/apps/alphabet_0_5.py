"""Wallaroo 0.5's alphabet app (ApplicationBuilder, to_state_partition keyed by letter), ported
by its source and sink lines only. Each record: a 4-byte big-endian length, then one letter
byte and a ">I" vote count."""

import struct

import wallaroo


def application_setup(args):
    ab = wallaroo.ApplicationBuilder("alphabet")
    ab.new_pipeline("alphabet", wallaroo.StreamSource(decoder))  # was TCPSourceConfig
    ab.to_state_partition(add_votes, TotalVotes, "letter state", partition,
                          list("abcdefghijklmnopqrstuvwxyz"))
    ab.to_sink(wallaroo.StreamSink("totals", encoder))  # was TCPSinkConfig
    return ab.build()


class TotalVotes:
    def __init__(self):
        self.letter = ""
        self.votes = 0

    def update(self, votes):
        self.letter = votes.letter
        self.votes += votes.votes

    def get_votes(self):
        return Votes(self.letter, self.votes)


class Votes:
    def __init__(self, letter, votes):
        self.letter = letter
        self.votes = votes


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    (letter, vote_count) = struct.unpack(">sI", bs)
    return Votes(letter.decode(), vote_count)


@wallaroo.partition
def partition(data):
    return data.letter


@wallaroo.state_computation(name="add votes")
def add_votes(data, state):
    state.update(data)
    return (state.get_votes(), True)


@wallaroo.encoder
def encoder(data):
    return f"{data.letter} {data.votes}"
