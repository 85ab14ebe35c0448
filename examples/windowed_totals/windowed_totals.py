"""Windowed totals: per user, the total of their transactions in every minute of event time
(taken from the record). Shows Wallaroo 0.6's windows: an Aggregation over keyed
`range_windows(...).with_delay(...)` (`count_windows(n).over(Total)` would total every n
transactions instead).

Input lines: "user,amount,unix seconds". A minute's total is emitted once a later record of
that user, 10 s past the minute's end, shows it is complete (the delay lets records arrive
up to 10 s out of order).
"""

import wallaroo


class Txn:
    def __init__(self, user, amount, at):
        self.user, self.amount, self.at = user, amount, at


class Total(wallaroo.Aggregation):
    def initial_accumulator(self):
        return [0, 0]  # cents, transactions

    def update(self, txn, acc):
        acc[0] += txn.amount
        acc[1] += 1
        return acc

    def combine(self, a, b):
        return [a[0] + b[0], a[1] + b[1]]

    def output(self, user, acc):
        return f"{user} {acc[0]} cents in {acc[1]} transaction(s)"


# Why `minute` is not in the output: a window does not know its start; put the event time
# in the accumulator (as min/max) if the output needs it.


def application_setup(args):
    per_minute = (wallaroo.range_windows(wallaroo.minutes(1)).with_delay(wallaroo.seconds(10))
                  .with_timestamp(event_time).over(Total, name="per minute"))
    pipeline = (wallaroo.source("txns", wallaroo.StreamSource(decoder=decode))
                .key_by(user)
                .to(per_minute)
                .to_sink(wallaroo.StreamSink("minutes", encoder=line)))
    return wallaroo.build_application("windowed_totals", pipeline, partitions=4)


@wallaroo.decoder
def decode(bs):
    user, cents, at = bs.decode("utf-8").split(",")
    return Txn(user, int(cents), float(at))


@wallaroo.key_extractor
def user(txn):
    return txn.user


def event_time(txn):
    return txn.at


@wallaroo.encoder
def line(text):
    return text + "\n"
