"""The runner caps glibc's malloc arenas (snapshot encoding threads otherwise each keep an
arena's freed megabytes resident), unless the operator chose a cap with MALLOC_ARENA_MAX.
Each case runs in a fresh interpreter: mallopt would change this one's allocator."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CALL = "from wallaroo_runtime.runner import limit_malloc_arenas; print(limit_malloc_arenas())"


def capped(env_cap: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if env_cap is not None:
        env["MALLOC_ARENA_MAX"] = env_cap
    done = subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_arenas_are_capped_on_glibc() -> None:
    assert capped(None) == "True"


def test_an_operators_malloc_arena_max_wins() -> None:
    assert capped("8") == "False"


LIMIT = """
import resource
from wallaroo_runtime.runner import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
print(raise_open_files_limit(4096), min(4096, hard), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
resource.setrlimit(resource.RLIMIT_NOFILE, (min(8000, hard), hard))
print(raise_open_files_limit(4096), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_open_files_limit_is_raised_towards_the_hard_limit_never_lowered() -> None:
    done = subprocess.run([sys.executable, "-c", LIMIT], capture_output=True, text=True,
                          check=True, timeout=60)
    raised, expected, now = done.stdout.split("\n")[0].split()
    assert raised == expected == now
    kept, now = done.stdout.split("\n")[1].split()
    assert kept == now and int(now) >= min(4096, int(expected))
