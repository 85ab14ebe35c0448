"""Version 1 of the counter: `word => n`."""

from counter import build

app = build("{word} => {n}")
