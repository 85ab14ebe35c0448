"""Rendezvous hashing and the leader's assignment: every partition has exactly one live
owner, each stage's partitions are spread evenly, and a join or leave moves only the
partitions that must move."""

import random
from collections import Counter

import pytest

from wallaroo.core.wire import Assignment, Manifest, StageInfo
from wallaroo_runtime.cluster import assignment
from wallaroo_runtime.ownership import rendezvous


def manifest(partitions: int = 16) -> Manifest:
    stages = [StageInfo(0, "src", 1, "src", 1, []), StageInfo(1, "count", partitions, None, None, ["out"])]
    return Manifest(name="app", slug="app", version="v", python="3.11", cloudpickle="3",
                    partitions=partitions, stages=stages, sinks=["out"], by_value_modules=[],
                    created=0.0)


@pytest.mark.parametrize("members", [["r0"], ["r0", "r1"], ["a", "b", "c", "d", "e"]])
def test_every_partition_gets_exactly_one_live_owner(members: list[str]) -> None:
    owners = assignment(members, manifest()).owners

    assert set(owners) == {(0, 0)} | {(1, p) for p in range(16)}
    assert set(owners.values()) <= set(members)


def test_work_is_spread_over_runners() -> None:
    owners = assignment(["r0", "r1", "r2"], manifest(64)).owners

    assert set(owners.values()) == {"r0", "r1", "r2"}


def stage_loads(owners: dict[tuple[int, int], str], stage: int = 1) -> list[int]:
    return sorted(Counter(v for (s, _), v in owners.items() if s == stage).values())


@pytest.mark.parametrize(("partitions", "runners"), [(8, 2), (8, 3), (16, 5), (2, 2), (3, 4)])
def test_each_stage_is_spread_evenly_whatever_the_runner_ids(partitions: int, runners: int) -> None:
    """Rendezvous alone put 8 partitions 6:2 (or worse) on about a third of id pairs."""
    rng = random.Random(partitions * 100 + runners)
    for _ in range(200):
        members = [f"r-{rng.getrandbits(32):08x}" for _ in range(runners)]
        loads = stage_loads(assignment(members, manifest(partitions)).owners)

        assert sum(loads) == partitions
        assert loads[-1] == -(-partitions // runners), (members, loads)


def test_a_leaving_runner_moves_only_its_own_partitions() -> None:
    before = assignment(["r0", "r1", "r2"], manifest(64)).owners
    after = assignment(["r0", "r2"], manifest(64), Assignment(before)).owners

    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k, v in before.items() if v == "r1"}
    assert stage_loads(after) == [32, 32]


@pytest.mark.parametrize("joiners", [["r3"], ["r3", "r4"]])
def test_a_join_moves_partitions_only_to_the_joiners_and_only_their_share(joiners: list[str]) -> None:
    before = assignment(["r0", "r1", "r2"], manifest(64)).owners
    members = ["r0", "r1", "r2", *joiners]
    after = assignment(members, manifest(64), Assignment(before)).owners

    moved = {k for k in before if before[k] != after[k]}
    assert {after[k] for k in moved} == set(joiners)
    assert stage_loads(after)[-1] == -(-64 // len(members))
    assert len(moved) <= 64 - (64 // len(members)) * 3  # what the three held above their new share


def test_an_unchanged_membership_keeps_the_assignment() -> None:
    first = assignment(["r0", "r1", "r2"], manifest(64))

    assert assignment(["r0", "r1", "r2"], manifest(64), first) == first


def test_adding_a_member_moves_only_its_share_and_only_to_it() -> None:
    items = [f"app/0/{i}" for i in range(2000)]
    before = {item: rendezvous(["r0", "r1", "r2", "r3"], item) for item in items}
    after = {item: rendezvous(["r0", "r1", "r2", "r3", "r4"], item) for item in items}

    moved = [item for item in items if before[item] != after[item]]

    assert {after[item] for item in moved} == {"r4"}
    assert 0.15 < len(moved) / len(items) < 0.25  # ~1/5


def test_rendezvous_does_not_depend_on_member_order() -> None:
    assert all(
        rendezvous(["a", "b", "c"], f"x{i}") == rendezvous(["c", "a", "b"], f"x{i}")
        for i in range(100)
    )


def test_a_stage_being_re_partitioned_runs_its_old_layout_and_its_new_one() -> None:
    """wallaroo.core.repartition: 16 partitions numbered 0..15 drain into 4 numbered 16..19."""
    m = manifest(4)
    m.stages[1] = StageInfo(1, "count", 4, None, None, ["out"], base=16, prev=[0, 16])
    owners = assignment(["r0", "r1"], m).owners

    assert set(owners) == {(0, 0)} | {(1, p) for p in range(20)}
