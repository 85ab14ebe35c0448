"""Version 2 of the counter: another output format, the same state."""

from counter import build

app = build("{word}: {n} (v2)")
