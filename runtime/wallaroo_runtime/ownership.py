"""Which (stage, partition) this runner owns. A Protocol so the elastic cluster can swap in a
lease-based implementation without touching the workers."""

from __future__ import annotations

import hashlib
from typing import Protocol


class Ownership(Protocol):
    runner_id: str

    def owns(self, app: str, stage: int, part: int) -> bool: ...


def rendezvous(members: list[str], item: str) -> str:
    """The member with the highest hash for `item`: a join or leave moves only the items
    that must move."""
    return max(members, key=lambda m: hashlib.blake2b(f"{m}|{item}".encode(), digest_size=8).digest())


class StaticOwnership:
    """`count` runners started together; runner `index` owns its rendezvous share."""

    def __init__(self, index: int, count: int) -> None:
        if not 0 <= index < count:
            msg = f"runner index {index} is outside 0..{count - 1}"
            raise ValueError(msg)
        self.members = [f"r{i}" for i in range(count)]
        self.runner_id = self.members[index]

    def owns(self, app: str, stage: int, part: int) -> bool:
        return rendezvous(self.members, f"{app}/{stage}/{part}") == self.runner_id
