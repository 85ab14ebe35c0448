"""Version 1 of a function app (the deploy test ships version 2 over it)."""

import time

import wallaroo

app = wallaroo.App("fnver")


@app.function()
def version(seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return 1
