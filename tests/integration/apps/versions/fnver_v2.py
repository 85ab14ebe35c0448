"""Version 2 of the function app of fnver_v1.py."""

import time

import wallaroo

app = wallaroo.App("fnver")


@app.function()
def version(seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return 2
