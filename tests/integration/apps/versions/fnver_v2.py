"""Version 2 of the function app of fnver_v1.py."""

import wallaroo

app = wallaroo.App("fnver")


@app.function()
def version(gate: str = "") -> int:
    return 2
