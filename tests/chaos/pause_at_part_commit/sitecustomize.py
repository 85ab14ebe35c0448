"""Put on PYTHONPATH of a run that a test is about to SIGKILL, this stops the run between a
part's staging and its rename, so the kill lands exactly there instead of racing a window of
a few microseconds (it is loaded by every Python process of the run, runners included).

The first time a process renames a staged part into place while the target holds at least
WALLAROO_TEST_PAUSE_PARTS parts, it writes the staged file's path to WALLAROO_TEST_PAUSE_MARK
and holds that rename until the process is killed (at most PAUSE_SECONDS, after which the
rename goes ahead and the test, waiting on the mark, has already failed on its own deadline).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

PAUSE_SECONDS = 300.0
_real_replace = os.replace


def _parts(target: Path) -> int:
    return sum(1 for name in os.listdir(target) if not name.startswith(("_", ".")))


def _replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
    staged = Path(os.fsdecode(src))
    if (staged.parent.name == "_staging"
            and _parts(staged.parent.parent) >= int(os.environ["WALLAROO_TEST_PAUSE_PARTS"])):
        Path(os.environ["WALLAROO_TEST_PAUSE_MARK"]).write_text(str(staged))
        threading.Event().wait(PAUSE_SECONDS)
    _real_replace(src, dst, *args, **kwargs)


if os.environ.get("WALLAROO_TEST_PAUSE_MARK"):
    os.replace = _replace
