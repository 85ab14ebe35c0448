"""The runner caps glibc's malloc arenas (snapshot encoding threads otherwise each keep an
arena's freed megabytes resident), unless the operator chose a cap with MALLOC_ARENA_MAX."""

from __future__ import annotations

import platform

import pytest

from wallaroo_runtime.runner import limit_malloc_arenas

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")


@glibc
def test_arenas_are_capped_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False
