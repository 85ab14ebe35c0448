"""The counter over 5 partitions: redeployed over counter_v1's 2 to move its state by key."""

from counter import build

app = build("{word} => {n}", partitions=5)
