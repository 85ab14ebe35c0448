"""Rendezvous (highest random weight) hashing: who owns an item among a set of members."""

from __future__ import annotations

import hashlib


def rendezvous(members: list[str], item: str) -> str:
    """The member with the highest hash for `item`: a join or leave moves only the items
    that must move."""
    return max(members, key=lambda m: hashlib.blake2b(f"{m}|{item}".encode(), digest_size=8).digest())
