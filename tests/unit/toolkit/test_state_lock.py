"""wallaroo.local.dev.StateDirLock: one cluster per state folder, named when refused, and
never stale: a holder killed with SIGKILL lets the next one in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wallaroo.local.dev import DevCluster, StateDirBusyError, StateDirLock

HOLD = """
import sys, time
from pathlib import Path
from wallaroo.local.dev import StateDirLock
lock = StateDirLock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_holder_is_refused_naming_the_first_and_the_way_out(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path / "dev")
    with pytest.raises(StateDirBusyError) as refused:
        StateDirLock(tmp_path / "dev")

    assert str(refused.value) == (
        f"a wallaroo dev or run (pid {os.getpid()}) is already using {tmp_path / 'dev'}: stop it "
        f"(Ctrl-C in its terminal, or `kill {os.getpid()}`), or give this one another --state-dir")
    first.release()
    StateDirLock(tmp_path / "dev").release()  # free again


def test_a_fresh_cluster_does_not_delete_a_running_clusters_folder(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    lock = StateDirLock(state)
    (state / "nats").mkdir(parents=True)
    with pytest.raises(StateDirBusyError):
        DevCluster(state, fresh=True)
    assert (state / "nats").is_dir()
    lock.release()


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "dev")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StateDirBusyError, match=f"pid {holder.pid}"):
            StateDirLock(tmp_path / "dev")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    StateDirLock(tmp_path / "dev").release()
