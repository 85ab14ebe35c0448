"""Changing a stage's partition count on a redeploy, exactly once: the pure rules.

Design (why this one). A stage's partitions are numbered from a `base`: a redeploy with
another count gives the stage a new layout, numbered after every earlier one, so its input
subjects, durables, changelogs, snapshots, leases and producer ids are all fresh names
(nothing of the old layout's history can mix in, and nothing needs purging first). The old layout
keeps running, with the new version's code, until it is drained; then each new partition
builds its state from the old partitions' final states, by key. In detail:

1. Every partition of a stage routing into a re-laid-out stage, when it starts in the new
   version, first appends a *marker commit*: a fenced commit with no inputs whose outputs are
   one end-of-layout message ("eol:<sender>:<commit>>...") per OLD partition of the target.
   Everything it routes after that goes to the new layout. The fence orders the marker after
   every commit an earlier owner (even a zombie) made, so in each old input subject the
   marker follows every message that sender routed there.
2. An old partition is *drained* once it has committed a marker from every sender (every
   partition the upstream stages run): nothing more can arrive for its keys. It fires no
   timers once any sender ended its layout (the new partitions fire them: deadlines are
   state), and once drained changes no state; a stray record (a replayed dead letter) is
   dead-lettered again, never dropped, and `wallaroo dlq replay` sends it to its key's
   partition in the new layout.
3. A new partition q starts only once every old partition is drained and the outputs of its
   last commit are published (its inputs acked: nobody may run it again to publish them).
   It waits under its lease. Then it reads their final states (snapshot + changelog) and
   appends its own first commits: the slots whose RECORD key hashes to q
   (codec.partition_of, as routing does), cut into several consecutive commit records so any
   state size fits (a NATS message is 1 MiB at most), the last one marked MIGRATED (with a
   state store, MIGRATED is a commit of its own, appended once a snapshot of the moved state
   is stored: whatever reads the stage as settled, and so lets the old layout go, never
   depends on the changelog for the moved state). A
   runner killed midway resumes: the old states are final, so the records are recomputed
   identically and only the missing ones appended;
   the first append's fence (expected last seq 0) keeps two owners from both migrating.
4. Commit numbers: new partitions are new producers (fresh numbers), so downstream dedup
   never confuses them with an old partition's commits. Watermarks: a new partition takes,
   per sender, the max over the old partitions, and each old partition's watermark for a
   sender is at least that sender's marker commit: every replay of a commit routed by the
   old count is dropped, every commit routed by the new count is accepted.
5. Micro-batch buffers and windows are state slots, and deadlines are recomputed from the
   state table on restore: they move with their key.
6. Versions side by side: a runner still on the older version runs none of the new layout's
   partitions (AppHost.runnable), and an older version's worker whose changelog shows a newer
   one already ended the layout it would route into refuses to run (LayoutMovedError).
7. Retiring the old layout (wallaroo_runtime.layouts): once the stage is settled (every new
   partition's last changelog record shows MIGRATED) and the stage it routes into drains no
   layout of its own (until then an old partition may owe it end-of-layout markers), the
   leader records the old partitions retired (`retire_below`), assigns them no more, and the
   runners lay the stage out without its drained layout, as a deploy after it settled would.
   A later leader pass, under each old partition's lease, deletes its consumer, purges its
   input and changelog subjects, its snapshots and segments and its lease key, then records
   it reclaimed. Layouts are numbered upwards, so "every partition of the stage below N"
   names all the retired ones, even those of a layout a later deploy no longer mentions.

Why not stop-the-world (pause upstream, drain, split, start): pausing needs every runner to
agree on a moment, and a deployer killed between pause and start leaves the app paused. Here
nothing pauses: only the changed stage's new partitions wait for the drain, which every
running partition drives by itself, each step fenced and resumable.

Not supported (refused at deploy with the reason): changing a source stage's count (clients
publish round-robin over it), changing a count while the stage's last change is still being
drained (a deploy then says so: deploy again once every new partition has its state),
changing counts together with the stage structure, and changing a job's counts.

Who does what: the deployer only lays out the manifest (base, prev: see `lay_out`), as its
role may only write manifests and artifacts; the runners, which own the changelogs and the
state store, do all the moving, each partition under its own lease, and the leader among
them retires and reclaims the drained layout (the manifest keeps its `prev`: runners may not
write manifests, so the retirement is a record of its own, `WL_LAYOUTS`). A deployer killed
midway wrote either the old manifest or the new one: nothing is half done.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from wallaroo.core import codec
from wallaroo.core.errors import DeployError
from wallaroo.core.names import EOI_PREFIX, LAYOUT_PREFIX
from wallaroo.core.wire import CommitRecord, Manifest, Retirement, StageInfo

# LAYOUT_PREFIX (names.py) starts the ids of end-of-layout markers and "eol:<sender>" watermarks
SENT_PREFIX = "eol>"  # watermark of a sender that sent its markers to a layout
MIGRATED = "eol!"  # watermark of a new partition whose state was moved in
SLOT_SEPARATOR = "\x1f"  # wallaroo.core.engine.state_slot_of


class LayoutError(DeployError):
    """A redeploy changes partition counts in a way that cannot move keyed state."""


def marker_msg_id(sender: str, commit_no: int, stage: int, part: int) -> str:
    return f"{LAYOUT_PREFIX}{sender}:{commit_no}>{stage}.{part}"


def parse_marker(msg_id: str) -> tuple[str, int] | None:
    """(sender, its marker commit number) of an end-of-layout message, else None."""
    if not msg_id.startswith(LAYOUT_PREFIX):
        return None
    head = msg_id[len(LAYOUT_PREFIX):].rpartition(">")[0]
    sender, _, commit = head.rpartition(":")
    if not sender or not commit.isdigit():
        return None
    return sender, int(commit)


def heard_key(sender: str) -> str:
    return f"{LAYOUT_PREFIX}{sender}"


def sent_key(stage: int, base: int) -> str:
    """Watermark of a sender that sent its markers to the layout of `stage` starting at `base`."""
    return f"{SENT_PREFIX}{stage}.{base}"


def drained(watermarks: Mapping[str, int], senders: Iterable[str]) -> bool:
    """Has an old partition committed the end-of-layout marker of every sender?"""
    return all(heard_key(s) in watermarks for s in senders)


def record_key(slot: str) -> str:
    """The record key inside a state slot `step\\x1fkey` ("" for no key)."""
    return slot.partition(SLOT_SEPARATOR)[2]


def split_table(tables: Iterable[Mapping[str, bytes]], index: int, count: int) -> dict[str, bytes]:
    """The slots of `tables` (the old partitions' states) whose record key routes to
    partition `index` of `count`. A slot is in exactly one old table (one owner per key)."""
    out: dict[str, bytes] = {}
    for table in tables:
        for slot, value in table.items():
            if codec.partition_of(record_key(slot), count) == index:
                out[slot] = value
    return out


def merged_watermarks(old: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """A new partition's watermarks: per sender the highest commit any old partition took
    (each at least that sender's marker commit, after the drain). The layout's own flags
    and end-of-input state stay behind: they belong to the old partitions."""
    out: dict[str, int] = {}
    for marks in old:
        for sender, no in marks.items():
            if sender.startswith((LAYOUT_PREFIX, SENT_PREFIX, EOI_PREFIX)) or sender == MIGRATED:
                continue
            out[sender] = max(no, out.get(sender, 0))
    return out


def migration_records(table: Mapping[str, bytes], watermarks: Mapping[str, int],
                      budget: int, marker_apart: bool = False) -> list[CommitRecord]:
    """A new partition's first commits: `table` cut into records of about `budget` bytes
    of state at most (in slot order: the same input gives the same records, so a resumed
    migration appends exactly the missing ones), each with `watermarks`, the last MIGRATED.
    A single slot larger than `budget` is a record of its own. `marker_apart`: MIGRATED
    goes in one more record, with no state (the worker stores a snapshot of the moved state
    before it appends that one, so a stage that reads as settled has it in the store)."""
    chunks: list[dict[str, bytes]] = [{}]
    size = 0
    for slot in sorted(table):
        value = table[slot]
        cost = len(slot) + len(value) + 16
        if chunks[-1] and size + cost > budget:
            chunks.append({})
            size = 0
        chunks[-1][slot] = value
        size += cost
    marks = dict(watermarks)
    if marker_apart:
        chunks.append({})
    return [CommitRecord(commit_no=i + 1, first_seq=0, last_seq=0,
                         watermarks={**marks, MIGRATED: 1} if i == len(chunks) - 1 else marks,
                         states=chunk, outs=[])
            for i, chunk in enumerate(chunks)]


# --- deploy side --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutChange:
    stage: int
    then: int
    now: int


def _shape(m: Manifest) -> list[tuple[str, str | None, int | None]]:
    return [(s.name, s.source, s.target) for s in m.stages]


def changes(new: Manifest, deployed: Manifest) -> list[LayoutChange]:
    """The stages whose partition count `new` changes (by index)."""
    then = {s.index: s.partitions for s in deployed.stages}
    return [LayoutChange(s.index, then[s.index], s.partitions) for s in new.stages
            if s.index in then and then[s.index] != s.partitions]


def lay_out(new: Manifest, deployed: Manifest | None, settled: set[int], what: str) -> Manifest:
    """`new` with each stage's layout (base, prev) following `deployed`'s: a stage whose count
    changed gets a new layout numbered after the deployed one, draining it; an unchanged one
    keeps its layout, and its prev while that is still being drained (not in `settled`, the
    stages whose last change finished). Raises LayoutError for what cannot move state;
    `what` names the operation in the message ("deploy", "roll back to version X")."""
    if deployed is None:
        return new
    moved = changes(new, deployed)
    if moved:
        _refuse_unsupported(new, deployed, moved, settled, what)
    by_index = {s.index: s for s in deployed.stages}
    stages = [_stage_layout(s, by_index.get(s.index), settled) for s in new.stages]
    return replace(new, stages=stages)


def _stage_layout(now: StageInfo, then: StageInfo | None, settled: set[int]) -> StageInfo:
    if then is None:
        return replace(now, base=0, prev=None)
    if now.partitions == then.partitions:
        prev = None if then.index in settled else then.prev
        return replace(now, base=then.base, prev=prev)
    ends = [then.base + then.partitions, *([sum(then.prev)] if then.prev else [])]
    return replace(now, base=max(ends), prev=[then.base, then.partitions])


def _refuse_unsupported(new: Manifest, deployed: Manifest, moved: list[LayoutChange],
                        settled: set[int], what: str) -> None:
    text = ", ".join(f"stage {c.stage}: {c.then} then, {c.now} now" for c in moved)
    if _shape(new) != _shape(deployed):
        msg = (f"cannot {what}: it changes partition counts ({text}) and the stages too; keyed "
               "state moves only between versions with the same stages. Change one at a time: "
               "deploy the new counts with the deployed stages first, or deploy under a new app name")
        raise LayoutError(msg)
    if new.job or deployed.job:
        msg = (f"cannot {what}: it changes a job's partition counts ({text}); a job keeps its "
               "partitions until it ends: run it again with the new counts under a new name")
        raise LayoutError(msg)
    by_index = {s.index: s for s in deployed.stages}
    for c in moved:
        then = by_index[c.stage]
        if then.source is not None:
            msg = (f"cannot {what}: stage {c.stage} ({then.name}) is a source stage and clients "
                   f"publish over its {c.then} partitions; keep its count (the source's "
                   "partitions=) and change the keyed stages' (build_application(partitions=N))")
            raise LayoutError(msg)
        if then.prev is not None and c.stage not in settled:
            msg = (f"cannot {what}: stage {c.stage} ({then.name}) is still moving its state "
                   f"from {then.prev[1]} to {then.partitions} partitions; deploy again once "
                   "that has finished (its new partitions show commits in `wallaroo status`)")
            raise LayoutError(msg)


# --- retiring a drained layout (the leader; see wallaroo_runtime.layouts) ----------------


def retire_below(manifest: Manifest, settled: set[int]) -> dict[int, int]:
    """Per stage, the partition number below which its layouts are retired: nobody runs
    them, and their resources may go. Every layout before the drained one is (a count change
    is refused until the last one settled); the drained one too once the stage is settled
    (`settled`: every new partition's changelog shows MIGRATED, so none reads the old states
    again) and the stage it routes into drains no layout of its own: until that one settles,
    an old partition may still have to send it end-of-layout markers."""
    by_index = {s.index: s for s in manifest.stages}
    out: dict[int, int] = {}
    for st in manifest.stages:
        target = by_index.get(st.target) if st.target is not None else None
        waits = target is not None and target.prev is not None and target.index not in settled
        if st.prev is None or (st.index in settled and not waits):
            out[st.index] = st.base
        else:
            out[st.index] = st.prev[0]
    return out


def retired(record: Retirement, stage: StageInfo) -> int:
    """Partitions of `stage` below this number are retired. Never one of its current layout:
    a record left by an earlier app of the same name must not stop a fresh deploy's."""
    return min(record.retired.get(stage.index, 0), stage.base)


def running_parts(stage: StageInfo, record: Retirement) -> list[int]:
    """The partitions runners run: the current layout's, and the drained one's until retired."""
    below = retired(record, stage)
    return [p for p in stage.run_parts if p >= below]


def live_prev(stage: StageInfo, record: Retirement) -> tuple[int, int] | None:
    """The stage's drained layout (base, count) while it is not retired, else None: how
    runners lay the stage out (as a deploy after it settled would)."""
    if stage.prev is None or retired(record, stage) > stage.prev[0]:
        return None
    return stage.prev[0], stage.prev[1]


def to_retire(manifest: Manifest, record: Retirement, settled: set[int]) -> Retirement | None:
    """`record` with what `retire_below` adds to it, or None when it adds nothing."""
    wanted = retire_below(manifest, settled)
    merged = {i: max(n, record.retired.get(i, 0)) for i, n in wanted.items() if n}
    if all(record.retired.get(i, 0) >= n for i, n in merged.items()):
        return None
    return replace(record, retired={**record.retired, **merged})


def unsettled(manifest: Manifest, record: Retirement) -> list[StageInfo]:
    """The stages whose drained layout is not retired yet: whose changelogs the leader reads."""
    return [st for st in manifest.stages if st.prev is not None and retired(record, st) < st.base]


def to_reclaim(manifest: Manifest, record: Retirement) -> dict[int, range]:
    """Per stage, its retired partitions whose resources are not reclaimed yet."""
    out: dict[int, range] = {}
    for st in manifest.stages:
        parts = range(record.reclaimed.get(st.index, 0), retired(record, st))
        if parts:
            out[st.index] = parts
    return out


def still_valid(record: Retirement, laid: Manifest, deployed: Manifest | None) -> Retirement:
    """`record` without the entries a deploy of `laid` over `deployed` makes stale: those of
    a stage index `laid` no longer has, or has anew (numbered from 0 again), whose entry
    would retire partitions of another stage's layouts. An entry is only ever as high as the
    base of the layout current when it was made, and bases only grow while a stage lives."""
    bases = {s.index: s.base for s in deployed.stages} if deployed is not None else {}
    indexes = {s.index for s in laid.stages}

    def holds(stage: int, below: int) -> bool:
        return stage in indexes and stage in bases and below <= bases[stage]

    return Retirement({i: n for i, n in record.retired.items() if holds(i, n)},
                      {i: n for i, n in record.reclaimed.items() if holds(i, record.retired.get(i, n))})
