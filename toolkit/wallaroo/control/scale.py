"""Operator wishes for the local cluster: how many runners `wallaroo dev` should run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wallaroo.core.names import CONTROL_BUCKET, RUNNERS_WISH_KEY
from wallaroo.core.wire import RunnersWish

if TYPE_CHECKING:  # the client's import is the caller's: `wallaroo dev` imports this first
    from wallaroo.nats import Nats


async def request_runners(nats: Nats, n: int) -> None:
    """Ask the local cluster (`wallaroo dev`) to run `n` runners."""
    await nats.kv_put(CONTROL_BUCKET, RUNNERS_WISH_KEY, RunnersWish(n).to_wire())


async def requested_runners(nats: Nats) -> int | None:
    """The runner count last asked for, None if nobody asked."""
    raw = await nats.kv_get(CONTROL_BUCKET, RUNNERS_WISH_KEY)
    return RunnersWish.from_wire(raw).runners if raw else None
