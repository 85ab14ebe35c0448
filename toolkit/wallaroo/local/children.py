"""Child processes that do not outlive the `wallaroo dev`/`run` that started them.

Runners and nats-server run in process groups of their own (so Ctrl-C reaches only the
parent, which stops them in order). If the parent is SIGKILLed, nothing would stop them: they
would keep their ports, their JetStream store and the partitions they own, and the next `wallaroo
run` in the folder would find a store in use. On Linux a child started from the parent's main
thread asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG). Why the main thread
only: the signal follows the thread that forked the child, so a child started from a worker
thread would die with that thread."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen, or None where it does not apply."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    # Looked up here, in the parent: the child, between fork and exec, only calls it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return functools.partial(_ask_for_sigkill, prctl, os.getpid())


def _ask_for_sigkill(prctl: Callable[..., int], parent: int) -> None:
    """In the child, between fork and exec."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request: too late to be told
        os.kill(os.getpid(), signal.SIGKILL)
