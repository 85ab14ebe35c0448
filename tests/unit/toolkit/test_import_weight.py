"""Importing the authoring API (what an app module, its tests and wallaroo.testing do) does not
import the NATS client, nor the aiohttp it brings: a third of a second on every import."""

import subprocess
import sys


def test_import_wallaroo_does_not_import_the_nats_client() -> None:
    probe = ("import sys, wallaroo, wallaroo.testing; "
             "print(sorted(m for m in ('nats', 'aiohttp', 'wallaroo.nats.client') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
