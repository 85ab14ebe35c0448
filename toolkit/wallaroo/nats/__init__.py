"""NATS behind typed calls: `protocol` (types and Protocols, no nats-py), `client` (the one
module that imports nats-py), `memory` (the worker's Protocol in memory, for tests).

The client's names load on first use: `import wallaroo` reaches `protocol` (the engine's wire
types), and an app's module, its tests and `wallaroo.testing` must not pay for importing
nats-py (and the aiohttp it brings), a third of a second."""

from typing import TYPE_CHECKING, Any

from wallaroo.nats.protocol import (
    DUPLICATE_WINDOW,
    MSG_ID,
    Consumer,
    InMsg,
    KvEntry,
    Out,
    StoredMsg,
    WorkerNats,
)

if TYPE_CHECKING:
    from wallaroo.nats.client import Nats, PullConsumer, nats_failure, replicas, unavailable

_CLIENT = frozenset({"Nats", "PullConsumer", "nats_failure", "replicas", "unavailable"})


def __getattr__(name: str) -> Any:
    if name in _CLIENT:
        from wallaroo.nats import client

        return getattr(client, name)
    msg = f"module 'wallaroo.nats' has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = ["DUPLICATE_WINDOW", "MSG_ID", "Consumer", "InMsg", "KvEntry", "Nats", "Out",
           "PullConsumer", "StoredMsg", "WorkerNats", "nats_failure", "replicas", "unavailable"]
