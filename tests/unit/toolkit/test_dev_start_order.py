"""`wallaroo dev` launches nats-server before the imports and the app load that the deploy
needs: the server's start overlaps them instead of following them. (Its runners come after
them: a broken app starts none, tests/integration/test_cli.py checks.)"""

import json
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[3] / "examples" / "word_count" / "word_count.py"

# Stands in for the server's launch: says what was imported by then, and stops dev there
# (nothing was started, so nothing is left running).
PROBE = """
import json, sys
from wallaroo.local import natsserver

LATER = sys.argv[1].split(",")

def launch(self):
    print(json.dumps(sorted(m for m in LATER if m in sys.modules)))
    raise SystemExit(0)

natsserver.NatsServer.launch = launch
from wallaroo.cli import main
sys.argv = ["wallaroo", "dev", *sys.argv[2:]]
main()
"""


def test_dev_launches_nats_server_before_loading_the_app_and_the_nats_client(
        tmp_path: Path) -> None:
    later = ["word_count", "wallaroo.core.packaging", "wallaroo.nats.client", "wallaroo.api",
             "asyncio", "wallaroo.core.wire"]
    res = subprocess.run([sys.executable, "-c", PROBE, ",".join(later), str(APP),
                          "--state-dir", str(tmp_path / "dev")],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert json.loads(res.stdout) == []
