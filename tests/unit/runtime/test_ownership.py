"""wallaroo_runtime.ownership: every partition has exactly one owner; joins move little."""

import pytest

from wallaroo_runtime.ownership import StaticOwnership, rendezvous

PARTITIONS = [(stage, part) for stage in range(3) for part in range(16)]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_every_partition_is_owned_by_exactly_one_runner(count: int) -> None:
    runners = [StaticOwnership(i, count) for i in range(count)]

    for stage, part in PARTITIONS:
        owners = [r.runner_id for r in runners if r.owns("app", stage, part)]
        assert len(owners) == 1, (stage, part, owners)


def test_work_is_spread_over_runners() -> None:
    runners = [StaticOwnership(i, 3) for i in range(3)]

    for r in runners:
        assert any(r.owns("app", s, p) for s, p in PARTITIONS)


def test_runner_index_must_be_in_range() -> None:
    with pytest.raises(ValueError, match="outside 0..2"):
        StaticOwnership(3, 3)


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
