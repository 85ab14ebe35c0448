"""The pure rules of a partition-count change (wallaroo.core.repartition): splitting state by
record key, the watermarks and commit records a new partition starts from, the marker ids, and
what a redeploy's layout is or why it is refused."""

from __future__ import annotations

import dataclasses

import pytest

from wallaroo.control.dlq import _replay_out
from wallaroo.core import codec, repartition
from wallaroo.core.changelog import PartitionState
from wallaroo.core.engine import state_slot_of
from wallaroo.core.errors import WireError
from wallaroo.core.names import AppNames
from wallaroo.core.wire import DeadLetter, Manifest, Retirement, StageInfo


def manifest(*partitions: int, job: bool = False) -> Manifest:
    stages = [StageInfo(i, f"s{i}", p, "in" if i == 0 else None, i + 1 if i + 1 < len(partitions)
                        else None, []) for i, p in enumerate(partitions)]
    return Manifest(name="c", slug="c", version="v", python="3.11", cloudpickle="3",
                    partitions=max(partitions), stages=stages, sinks=[], by_value_modules=[],
                    created=0.0, job=job)


def test_split_puts_every_slot_where_routing_sends_its_record_key() -> None:
    keys = [f"k{i}" for i in range(200)] + ["", "ünï", "a\x1fb"]
    old = [{state_slot_of(step, k): k.encode() for k in keys if codec.partition_of(k, 2) == p
            for step in ("count", "window")} for p in range(2)]
    parts = [repartition.split_table(old, q, 5) for q in range(5)]
    for q, table in enumerate(parts):
        assert table and all(codec.partition_of(repartition.record_key(s), 5) == q for s in table)
    merged = {slot: v for t in parts for slot, v in t.items()}
    assert merged == {**old[0], **old[1]}  # every slot once, values untouched
    assert sum(map(len, parts)) == len(merged)
    assert repartition.record_key(state_slot_of("w", "a\x1fb")) == "a\x1fb"  # split at the first


def test_new_watermarks_are_the_max_per_sender_without_the_layouts_own_flags() -> None:
    a = {"s0.0": 7, "s0.1": 3, "eol:s0.0": 1, "eol>2.0": 1, "eoi:src.x": 1, repartition.MIGRATED: 1}
    b = {"s0.0": 9, "s0.2": 4, "eol:s0.1": 1}
    assert repartition.merged_watermarks([a, b]) == {"s0.0": 9, "s0.1": 3, "s0.2": 4}


def test_drained_only_once_every_sender_ended_the_layout() -> None:
    senders = ["s0.0", "s0.1"]
    assert not repartition.drained({"eol:s0.0": 1, "s0.1": 5}, senders)
    assert repartition.drained({"eol:s0.0": 1, "eol:s0.1": 1}, senders)


def test_markers_name_their_sender_and_its_commit() -> None:
    sender = AppNames.producer(0, 3)
    msg_id = repartition.marker_msg_id(sender, 42, 1, 7)
    assert repartition.parse_marker(msg_id) == (sender, 42)
    assert repartition.parse_marker("eoi:s0.1>1.2") is None
    assert repartition.parse_marker("eol:junk>1.2") is None


def test_migration_records_are_consecutive_bounded_deterministic_and_end_migrated() -> None:
    table = {f"count\x1fk{i:03}": bytes(100) for i in range(100)}
    marks = {"s0.0": 5}
    recs = repartition.migration_records(table, marks, budget=1000)
    assert len(recs) > 10
    assert [r.commit_no for r in recs] == list(range(1, len(recs) + 1))
    assert all(sum(len(k) + len(v) for k, v in r.states.items()) <= 1000 for r in recs)
    assert [repartition.MIGRATED in r.watermarks for r in recs] == [False] * (len(recs) - 1) + [True]
    # Replaying them is the table and the watermarks; a resumed migration recomputes the same.
    state = PartitionState.replay(recs)
    assert state.table == table and state.watermarks == {**marks, repartition.MIGRATED: 1}
    assert state.committed_seq == 0  # no input consumed: the new input subject starts whole
    assert repartition.migration_records(dict(reversed(table.items())), marks, 1000) == recs
    big = repartition.migration_records({"a\x1fx": bytes(5000), "a\x1fy": b"1"}, {}, 1000)
    assert [len(r.states) for r in big] == [1, 1]
    assert repartition.migration_records({}, marks, 1000)[0].watermarks[repartition.MIGRATED] == 1


def test_with_the_marker_apart_migrated_is_a_record_of_its_own_after_the_state() -> None:
    table = {f"count\x1fk{i:03}": bytes(100) for i in range(100)}
    plain = repartition.migration_records(table, {"s0.0": 5}, budget=1000)
    apart = repartition.migration_records(table, {"s0.0": 5}, budget=1000, marker_apart=True)
    assert [r.states for r in apart[:-1]] == [r.states for r in plain]
    assert [repartition.MIGRATED in r.watermarks for r in apart] == [False] * len(plain) + [True]
    assert apart[-1].states == {} and apart[-1].commit_no == len(plain) + 1
    assert PartitionState.replay(apart).table == PartitionState.replay(plain).table == table


def test_a_changed_count_gets_a_fresh_layout_draining_the_deployed_one() -> None:
    first = repartition.lay_out(manifest(1, 2), None, set(), "deploy")
    assert [(s.base, s.prev) for s in first.stages] == [(0, None), (0, None)]
    wide = repartition.lay_out(manifest(1, 5), first, {0, 1}, "deploy")
    assert [(s.base, s.prev) for s in wide.stages] == [(0, None), (2, [0, 2])]
    assert wide.stages[1].run_parts == [0, 1, 2, 3, 4, 5, 6]
    # A redeploy with the same counts keeps the layout, and its prev until it is settled.
    again = repartition.lay_out(manifest(1, 5), wide, {0}, "deploy")
    assert (again.stages[1].base, again.stages[1].prev) == (2, [0, 2])
    settled = repartition.lay_out(manifest(1, 5), wide, {0, 1}, "deploy")
    assert (settled.stages[1].base, settled.stages[1].prev) == (2, None)
    # Down to 3 once settled: numbered after every earlier layout, never reusing a name.
    narrow = repartition.lay_out(manifest(1, 3), wide, {0, 1}, "deploy")
    assert (narrow.stages[1].base, narrow.stages[1].prev) == (7, [2, 5])
    assert list(narrow.stages[1].parts) == [7, 8, 9]


def test_what_cannot_move_state_is_refused_with_the_reason() -> None:
    deployed = repartition.lay_out(manifest(1, 5), manifest(1, 2), {0, 1}, "deploy")
    with pytest.raises(repartition.LayoutError, match=r"stage 1 \(s1\) is still moving its state "
                       r"from 2 to 5 partitions; deploy again once that has finished"):
        repartition.lay_out(manifest(1, 3), deployed, {0}, "deploy")
    with pytest.raises(repartition.LayoutError, match=r"stage 0 \(s0\) is a source stage"):
        repartition.lay_out(manifest(2, 2), manifest(1, 2), {0, 1}, "deploy")
    with pytest.raises(repartition.LayoutError, match="and the stages too"):
        repartition.lay_out(manifest(1, 3, 1), manifest(1, 2), {0, 1}, "deploy")
    with pytest.raises(repartition.LayoutError, match="a job's partition counts"):
        repartition.lay_out(manifest(1, 3, job=True), manifest(1, 2, job=True), {0, 1}, "deploy")
    # Other stages alone (no count changed) are no layout change: deployed as before.
    added = repartition.lay_out(manifest(1, 2, 2), manifest(1, 2), {0, 1}, "deploy")
    assert [(s.base, s.prev) for s in added.stages] == [(0, None)] * 3


def test_manifest_layout_survives_the_wire() -> None:
    m = repartition.lay_out(manifest(1, 5), manifest(1, 2), {0, 1}, "deploy")
    back = Manifest.from_wire(m.to_wire())
    assert back == m and back.stages[1].prev == [0, 2]
    assert dataclasses.replace(back.stages[1], prev=None).run_parts == [2, 3, 4, 5, 6]


def test_a_dead_letter_of_a_drained_partition_is_replayed_to_its_keys_partition_now() -> None:
    m = repartition.lay_out(manifest(1, 5), manifest(1, 2), {0, 1}, "deploy")
    names = AppNames("c")
    letter = DeadLetter("s1", "count", "layout_drained", "late", "", 1, "k7", b"v", (9, 0))
    old = _replay_out(names, m, letter.placed("c", "v", 0.0, 1, 0), lambda msg_id: "tag")
    now = _replay_out(names, m, letter.placed("c", "v", 0.0, 1, 4), lambda msg_id: "tag")
    assert old.msg_id.endswith("~tag")  # see Nats.id_tag
    assert old.subject == names.data(1, 2 + codec.partition_of("k7", 5))
    assert now.subject == names.data(1, 4)  # a partition of the current layout: as before


def laid(m: Manifest, **layouts: tuple[int, list[int] | None]) -> Manifest:
    """`m` with stage `s<i>` laid out at (base, prev)."""
    stages = [dataclasses.replace(s, base=layouts[s.name][0], prev=layouts[s.name][1])
              if s.name in layouts else s for s in m.stages]
    return dataclasses.replace(m, stages=stages)


def test_a_drained_layout_retires_once_settled_and_its_target_drains_none() -> None:
    m = laid(manifest(1, 5, 3), s1=(2, [0, 2]))
    assert repartition.retire_below(m, set()) == {0: 0, 1: 0, 2: 0}  # still migrating
    assert repartition.retire_below(m, {1}) == {0: 0, 1: 2, 2: 0}
    both = laid(manifest(1, 5, 4), s1=(2, [0, 2]), s2=(3, [0, 3]))
    # stage 1's old partitions may still owe stage 2's old layout its end markers
    assert repartition.retire_below(both, {1}) == {0: 0, 1: 0, 2: 0}
    assert repartition.retire_below(both, {1, 2}) == {0: 0, 1: 2, 2: 3}
    # a deploy after it settled dropped prev: every earlier layout is retired
    assert repartition.retire_below(laid(manifest(1, 5, 3), s1=(7, None)), set()) == {0: 0, 1: 7, 2: 0}


def test_the_retirement_record_only_grows_and_says_what_to_run_and_reclaim() -> None:
    m = laid(manifest(1, 5, 3), s1=(2, [0, 2]))
    none = Retirement()
    assert repartition.to_retire(m, none, set()) is None  # nothing settled: nothing new
    record = repartition.to_retire(m, none, {1})
    assert record == Retirement({1: 2})
    assert repartition.to_retire(m, record, {1}) is None  # twice: harmless
    stage = m.stages[1]
    assert (repartition.running_parts(stage, none), repartition.live_prev(stage, none)) == \
        ([0, 1, 2, 3, 4, 5, 6], (0, 2))
    assert (repartition.running_parts(stage, record), repartition.live_prev(stage, record)) == \
        ([2, 3, 4, 5, 6], None)
    assert repartition.to_reclaim(m, record) == {1: range(0, 2)}
    assert repartition.to_reclaim(m, dataclasses.replace(record, reclaimed={1: 2})) == {}
    assert [s.index for s in repartition.unsettled(m, none)] == [1]
    assert repartition.unsettled(m, record) == []
    # the next change (5 -> 3, draining 2..6) and a record that knows only the first retirement
    later = laid(manifest(1, 3, 3), s1=(7, [2, 5]))
    assert repartition.to_retire(later, record, set()) is None
    assert repartition.to_retire(later, record, {1}) == Retirement({1: 7})
    # a record left by an earlier app of the same name never stops a fresh deploy's partitions
    fresh = manifest(1, 2, 3)
    assert repartition.running_parts(fresh.stages[1], Retirement({1: 7})) == [0, 1]
    assert repartition.to_reclaim(fresh, Retirement({1: 7})) == {}


def test_a_deploy_forgets_what_the_record_says_of_stages_it_removes_or_starts_anew() -> None:
    """Stage 2 was re-partitioned twice (retired below 12); a deploy dropped it, another
    added it back (numbered from 0), and its count then changed 4 -> 8 (base 4, draining
    0..3): the old entry, left in place, retired the draining layout (min(12, 4) = 4)."""
    record = Retirement({1: 2, 2: 12}, {2: 12})
    before = laid(manifest(1, 5, 3), s1=(2, None), s2=(12, None))
    assert repartition.still_valid(record, before, before) == record  # a redeploy: all hold
    grown = laid(manifest(1, 5, 6), s1=(2, None), s2=(15, [12, 3]))
    assert repartition.still_valid(record, grown, before) == record  # the entry is of this lineage
    dropped = laid(manifest(1, 5), s1=(2, None))
    assert repartition.still_valid(record, dropped, before) == Retirement({1: 2}, {})
    readded = laid(manifest(1, 5, 4), s1=(2, None), s2=(0, None))
    assert repartition.still_valid(record, readded, dropped) == Retirement({1: 2}, {})
    # had the entry stayed: the new lineage's first change is running nothing of its drain
    changed = laid(manifest(1, 5, 8), s1=(2, None), s2=(4, [0, 4]))
    assert repartition.live_prev(changed.stages[2], record) is None
    kept = repartition.still_valid(record, changed, readded)
    assert repartition.live_prev(changed.stages[2], kept) == (0, 4)


def test_the_retirement_record_survives_the_wire() -> None:
    record = Retirement({1: 7, 2: 3}, {1: 2})
    assert Retirement.from_wire(record.to_wire()) == record
    with pytest.raises(WireError):
        Retirement.from_wire(b'{"retired": 1}')
