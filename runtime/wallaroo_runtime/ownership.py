"""Who owns an item among a set of members: rendezvous (highest random weight) hashing, and
an even spread of a group of items built on it."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping


def _weight(member: str, item: str) -> bytes:
    return hashlib.blake2b(f"{member}|{item}".encode(), digest_size=8).digest()


def rendezvous(members: list[str], item: str) -> str:
    """The member with the highest hash for `item`: a join or leave moves only the items
    that must move."""
    return max(members, key=lambda m: _weight(m, item))


def ranked(members: list[str], item: str) -> list[str]:
    """`members` in `item`'s order of preference (rendezvous order, first = `rendezvous`)."""
    return sorted(members, key=lambda m: _weight(m, item), reverse=True)


def spread(members: list[str], items: list[str], current: Mapping[str, str]) -> dict[str, str]:
    """Each of `items` to one of `members`, none holding more than ceil(items / members).

    Why not rendezvous alone: it balances only on average. A stage's 8 partitions over two
    runners land 6:2 or worse about three times in ten, and that stage then runs at two thirds of
    the speed two runners could give it. Here an item stays with its `current` owner while
    that one is a member with room (so a leave moves only the leaver's items, and a join only
    what the joiner takes over: the share the others hold above the new bound), and otherwise
    goes to its most preferred member with room. Same inputs, same answer."""
    if not members:
        return {}
    cap = -(-len(items) // len(members))
    load: Counter[str] = Counter()
    owners: dict[str, str] = {}
    prefs = {item: ranked(members, item) for item in items}
    # Keep first where the owner ranks highest for the item: what a full owner sheds is what
    # it was least preferred for (kept items stay put: the spread is sticky, not rendezvous').
    kept = sorted((prefs[i].index(current[i]), i) for i in items if current.get(i) in prefs[i])
    for _, item in kept:
        if load[current[item]] < cap:
            owners[item] = current[item]
            load[current[item]] += 1
    for item in items:
        if item not in owners:
            owners[item] = next(m for m in prefs[item] if load[m] < cap)
            load[owners[item]] += 1
    return owners
