"""NATS behind typed calls: `protocol` (types and Protocols, no nats-py), `client` (the one
module that imports nats-py), `memory` (the worker's Protocol in memory, for tests)."""

from wallaroo.nats.client import Nats, PullConsumer, nats_failure, replicas, unavailable
from wallaroo.nats.protocol import MSG_ID, Consumer, InMsg, KvEntry, Out, StoredMsg, WorkerNats

__all__ = ["MSG_ID", "Consumer", "InMsg", "KvEntry", "Nats", "Out", "PullConsumer", "StoredMsg",
           "WorkerNats", "nats_failure", "replicas", "unavailable"]
