"""Where a decision takes effect. A backend owns one pool of runners; the loop only reads its
desired count and sets a new one. The AWS backend lives in aws.py (the one boto3 importer)."""

from __future__ import annotations

import logging
from typing import Protocol

from wallaroo.core import observe
from wallaroo.core.names import CONTROL_BUCKET, RUNNERS_WISH_KEY
from wallaroo.core.wire import RunnersWish
from wallaroo.nats import Nats

log = logging.getLogger(__name__)


class Backend(Protocol):
    """The seam between the decision and the machines that run runners."""

    name: str

    async def current(self) -> int:
        """The desired (or current) runner count as the backend sees it now."""
        ...

    async def set_desired(self, n: int) -> None:
        """Ask for `n` runners. May return before they are up; the next `current()` shows it."""
        ...


class StaticBackend:
    """A fixed pool the autoscaler must not touch: reports `n`, logs what it would have done.

    Useful to run the loop in "dry run" mode next to a fleet sized by hand.
    """

    name = "static"

    def __init__(self, n: int) -> None:
        if n < 0:
            msg = f"StaticBackend needs a runner count >= 0, got {n}"
            raise ValueError(msg)
        self.n = n
        self.requested: list[int] = []  # what the loop asked for, for status output and tests

    async def current(self) -> int:
        """The fixed count given at construction, whatever was requested since."""
        return self.n

    async def set_desired(self, n: int) -> None:
        """Record and log the request; the pool stays as it is."""
        self.requested.append(n)
        log.info("static backend: would scale to %d", n)


class LocalBackend:
    """The runner pool of a `wallaroo dev` on this machine, driven through NATS: the wish goes
    into the control bucket (as `wallaroo scale` does), and the dev cluster starts or
    gracefully stops runner subprocesses to match. The autoscaler never owns processes."""

    name = "local"

    def __init__(self, nats: Nats) -> None:
        self.nats = nats

    async def current(self) -> int:
        """The count last asked for; before any wish, the runners alive now."""
        raw = await self.nats.kv_get(CONTROL_BUCKET, RUNNERS_WISH_KEY)
        if raw is not None:
            return RunnersWish.from_wire(raw).runners
        return len(await observe.runner_heartbeats(self.nats))

    async def set_desired(self, n: int) -> None:
        await self.nats.kv_put(CONTROL_BUCKET, RUNNERS_WISH_KEY, RunnersWish(n).to_wire())
