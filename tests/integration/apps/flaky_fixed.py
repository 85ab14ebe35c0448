"""The flaky app, fixed: 13 is just a number now (deploy it, then `wallaroo dlq replay`)."""

from flaky import build

app = build(poison=None)
