"""Where a decision takes effect. A backend owns one pool of runners; the loop only reads its
desired count and sets a new one. The AWS backend lives in aws.py (the one boto3 importer)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from wallaroo.dev import RunnerPool

log = logging.getLogger(__name__)


class Backend(Protocol):
    """The seam between the decision and the machines that run runners."""

    name: str

    def current(self) -> int:
        """The desired (or current) runner count as the backend sees it now."""
        ...

    def set_desired(self, n: int) -> None:
        """Ask for `n` runners. May return before they are up; the next `current()` shows it."""
        ...


class StaticBackend:
    """A fixed pool the autoscaler must not touch: reports `n`, logs what it would have done.

    Useful to run the loop in "dry run" mode next to a fleet sized by hand.

    >>> b = StaticBackend(3)
    >>> b.set_desired(5)
    >>> b.current()
    3
    """

    name = "static"

    def __init__(self, n: int) -> None:
        if n < 0:
            msg = f"StaticBackend needs a runner count >= 0, got {n}"
            raise ValueError(msg)
        self.n = n
        self.requested: list[int] = []  # what the loop asked for, for status output and tests

    def current(self) -> int:
        """The fixed count given at construction, whatever was requested since."""
        return self.n

    def set_desired(self, n: int) -> None:
        """Record and log the request; the pool stays as it is."""
        self.requested.append(n)
        log.info("static backend: would scale to %d", n)


class LocalBackend:
    """Runner subprocesses on this machine (a RunnerPool of `wallaroo dev` or of a standalone
    `wallaroo autoscaler --backend local`). Shrinking stops the newest runners gracefully."""

    name = "local"

    def __init__(self, pool: RunnerPool) -> None:
        self.pool = pool

    def current(self) -> int:
        return len(self.pool.runners)

    def set_desired(self, n: int) -> None:
        self.pool.scale_to(n)
