"""One trivial function, for bench/functions.py: what a call costs beyond its body."""

import wallaroo

app = wallaroo.App("bench_functions")


def increment(x: int) -> int:
    """The body every side runs; plain, so the process-pool baseline can pickle it by name."""
    return x + 1


# the same body twice: at the default concurrency (8 calls at a time per runner) and at 64
remote_increment = app.function(name="increment")(increment)
remote_increment_wide = app.function(name="increment_wide", concurrency=64)(increment)
