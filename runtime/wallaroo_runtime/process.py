"""What every long-lived runtime process (runner, autoscaler) sets up the same way: logging,
SIGINT/SIGTERM as a graceful stop, and the backoff its supervised loops restart with."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from wallaroo.core.aio import doubling

RESTART_BACKOFF = (0.2, 5.0)  # seconds: first delay after a failure, and the cap


def backoff() -> Iterator[float]:
    """Delays between restarts of a failing loop: doubling from the first to the cap."""
    return doubling(*RESTART_BACKOFF)


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("WALLAROO_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop)` in a fresh event loop; SIGINT or SIGTERM sets `stop`, and `main` is
    expected to finish its work in hand and return."""
    setup_logging()

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(body())
