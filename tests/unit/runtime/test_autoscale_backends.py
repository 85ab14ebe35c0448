"""wallaroo_runtime.autoscale.backends: the static backend reports, logs, and never moves."""

from __future__ import annotations

import asyncio
import logging

import pytest

from wallaroo_runtime.autoscale import Backend, StaticBackend


def test_static_backend_logs_the_request_and_keeps_its_count(caplog: pytest.LogCaptureFixture) -> None:
    backend: Backend = StaticBackend(3)

    with caplog.at_level(logging.INFO, logger="wallaroo_runtime.autoscale.backends"):
        asyncio.run(backend.set_desired(5))

    assert asyncio.run(backend.current()) == 3
    assert "static backend: would scale to 5" in caplog.messages
    assert backend.name == "static"


def test_static_backend_remembers_every_request() -> None:
    backend = StaticBackend(2)

    for n in (4, 0, 2):
        asyncio.run(backend.set_desired(n))

    assert backend.requested == [4, 0, 2]


def test_static_backend_rejects_a_negative_count() -> None:
    with pytest.raises(ValueError, match="got -1"):
        StaticBackend(-1)
