"""The counter over 3 partitions instead of 2: its keyed state is laid out otherwise."""

from counter import build

app = build("{word} => {n}", partitions=3)
