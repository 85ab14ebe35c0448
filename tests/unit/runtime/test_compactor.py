"""Compaction in the helper process (wallaroo_runtime.compactor), a real child process over a
file state store: it folds the stored deltas into a full snapshot of the newest delta's
commit, MACed like the runner's, packing again only the buckets they changed; a checkpointer
hands it the compactions of big states and goes on writing deltas; a failed or short
compaction makes the checkpointer write the next full snapshot itself; a helper that dies
fails what it was doing and the next one is started; and a helper whose runner is SIGKILLed
exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest
from checkpoint_support import APP, PART, STAGE, Trims, delta, full, put

from wallaroo.core.changelog import PartitionState
from wallaroo.core.statetable import bucket_of
from wallaroo.core.wire import CommitRecord
from wallaroo.nats import Nats
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.checkpoint import CheckpointConfig, Checkpointer
from wallaroo_runtime.compactor import Compacted, Compactor, CompactorError, compact
from wallaroo_runtime.snapshot import Snapshot
from wallaroo_runtime.statestore import FileStore

pytestmark = pytest.mark.timeout(120)
KEY = b"k" * 32


def latest(store: FileStore, key: bytes | None = KEY) -> snap.Chain:
    found = asyncio.run(snap.latest_chain(store, APP, STAGE, PART, key))
    assert found is not None
    return found


def compact_with(compactor: Compactor, times: int = 1) -> list[Compacted | None]:
    async def body() -> list[Compacted | None]:
        try:
            return [await compactor.compact(APP, STAGE, PART) for _ in range(times)]
        finally:
            await compactor.close()

    return asyncio.run(body())


def test_the_helper_folds_the_deltas_into_a_full_snapshot_of_the_newest_ones_commit(
        tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    put(store, full(3, {"a": b"1", "b": b"1"}), delta(6, 3, {"a": b"2"}),
        delta(10, 6, {"c": b"1", "a": b"3"}), key=KEY)

    first, again = compact_with(Compactor(store.url, KEY), times=2)

    assert first is not None and (first.commit_no, first.keys) == (10, 3)
    assert again is None  # no delta after the new full snapshot: nothing to fold
    found = latest(store)
    assert (found.snapshot.commit_no, found.deltas, found.full_bytes) == (10, 0, first.size)
    assert found.snapshot.table == {"a": b"3", "b": b"1", "c": b"1"}
    assert found.snapshot.log_seq == 10 and found.snapshot.committed_seq == 100
    written = (tmp_path / snap.snapshot_key(APP, STAGE, PART, 10)).read_bytes()
    with pytest.raises(snap.CorruptSnapshotError, match="MAC"):  # sealed with the state key
        snap.decode(written, state_key=b"x" * 32)


def test_a_compaction_packs_again_only_the_buckets_its_deltas_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)
    table = {f"k{i}": str(i).encode() for i in range(10 * snap.BUCKET_KEYS)}
    put(store, full(3, table), delta(6, 3, {"k1": b"new"}), delta(9, 6, {"k2": b"newer"}), key=KEY)
    packed: list[object] = []
    real_pack = snap._pack
    monkeypatch.setattr(snap, "_pack", lambda body: packed.append(body) or real_pack(body))

    done = asyncio.run(compact(store, APP, STAGE, PART, KEY))  # what the helper runs

    buckets = [b for b in packed if isinstance(b, dict) and "slug" not in b and "kind" not in b]
    assert len(buckets) == len({bucket_of(k, 10) for k in ("k1", "k2")})  # of 10
    assert done is not None and done.keys == len(table)
    assert latest(store).snapshot.table == table | {"k1": b"new", "k2": b"newer"}


def test_a_state_that_grew_is_compacted_into_more_buckets(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    table = {f"k{i}": b"1" for i in range(2 * snap.BUCKET_KEYS)}  # 2 buckets
    grown = {f"n{i}": b"2" for i in range(3 * snap.BUCKET_KEYS)}
    put(store, full(3, table), delta(6, 3, grown), key=KEY)

    asyncio.run(compact(store, APP, STAGE, PART, KEY))

    data = (store.root / snap.snapshot_key(APP, STAGE, PART, 6)).read_bytes()
    assert len(snap._unseal(snap.SNAPSHOT_KIND, data, "test", KEY)["table"]) == 4  # 640 keys each
    assert latest(store).snapshot.table == table | grown


def checkpointer(store: FileStore, compactor: Compactor, offload_bytes: int) -> Checkpointer:
    cfg = CheckpointConfig(store=store, every=1, seconds=3600, max_deltas=4, state_key=KEY,
                           compactor=compactor, offload_bytes=offload_bytes)
    return Checkpointer(cast(Nats, Trims()), cfg, APP, STAGE, PART, "LOG", "log.1.0",
                        stateful=True)


def drive(cp: Checkpointer, commits: int, state: PartitionState | None = None,
          between: int | None = None) -> PartitionState:
    """`commits` commits of 3 keys each (after a first of 500 keys), each snapshotted, each
    snapshot (and the compaction it asks for) done before the next commit. `between`: the
    commit after which the helper is made to die."""
    state = state or PartitionState()
    compactor = cp.cfg.compactor
    assert compactor is not None

    async def body() -> None:
        for n in range(state.commit_no + 1, state.commit_no + commits + 1):
            changed = ({f"k{i}": b"0" * 20 for i in range(500)} if n == 1
                       else {f"k{(n * 3 + j) % 500}": str(n).encode() for j in range(3)})
            state.apply(CommitRecord(n, n, n, {}, changed, []))
            cp.threshold = 1
            await cp.after_commit(state.last.to_wire(), state, n)  # type: ignore[union-attr]
            if cp.writing is not None:
                await cp.writing
            if cp.compacting is not None:  # (asked for by the snapshot just written)
                await cp.compacting
            if n == between and compactor.pid is not None:
                os.kill(compactor.pid, signal.SIGKILL)
        await compactor.close()

    asyncio.run(body())
    return state


def fulls(store: FileStore) -> list[int]:
    folder = store.root / "snapshots" / APP / str(STAGE) / str(PART)
    return sorted(int(p.stem) for p in folder.glob("*.snap"))


def test_a_checkpointer_hands_compaction_to_the_helper_and_goes_on_with_deltas(
        tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    compactor = Compactor(store.url, KEY)
    cp = checkpointer(store, compactor, offload_bytes=0)

    state = drive(cp, 20)

    found = latest(store)
    assert found.snapshot.table == state.table and found.snapshot.commit_no == 20
    assert compactor.started == 1
    # Full snapshots the checkpointer did not write: those of commits it wrote deltas of.
    assert (tmp_path / snap.snapshot_key(APP, STAGE, PART, 1)).exists() is False  # pruned
    assert len(fulls(store)) == 2 and all(n > 1 for n in fulls(store))
    assert len(cp.recent) <= 4 and not cp.offload_failed  # the helper's snapshot reset the chain


def test_a_small_state_is_compacted_by_the_checkpointer_itself(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    compactor = Compactor(store.url, KEY)
    cp = checkpointer(store, compactor, offload_bytes=1 << 30)

    state = drive(cp, 12)

    assert compactor.started == 0  # never needed: no process started
    assert latest(store).snapshot.table == state.table and len(fulls(store)) == 2


def test_a_helper_killed_between_compactions_is_started_again(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    compactor = Compactor(store.url, KEY)
    cp = checkpointer(store, compactor, offload_bytes=0)

    state = drive(cp, 20, between=8)

    assert compactor.started == 2
    assert latest(store).snapshot.table == state.table


DIES = "import sys; sys.stdin.readline(); sys.stdin.readline(); sys.exit(3)"


def test_a_helper_that_dies_mid_compaction_fails_it_and_the_next_full_snapshot_is_ours(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileStore(tmp_path)
    cp = checkpointer(store, Compactor(store.url, KEY, [sys.executable, "-c", DIES]),
                      offload_bytes=0)

    state = drive(cp, 8)

    assert "exited with code 3" in caplog.text and "the next full snapshot is written here" in caplog.text
    assert latest(store).snapshot.table == state.table
    assert len(fulls(store)) == 2  # the first, and one the checkpointer wrote after the failure


def test_a_compaction_short_of_the_newest_delta_makes_the_next_full_snapshot_ours(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileStore(tmp_path)
    cp = checkpointer(store, Compactor(store.url, KEY), offload_bytes=0)
    state = drive(cp, 2)
    # The newest delta is corrupt from now on: the helper can roll forward only to the one
    # before it.
    folder = store.root / "snapshots" / APP / str(STAGE) / str(PART)
    real_write = snap.write

    async def corrupting(store_: FileStore, s: Snapshot, *args: object, **kw: object) -> int:
        size = await real_write(store_, s, *args, **kw)  # type: ignore[arg-type]
        if s.is_delta:
            (folder / f"{s.commit_no:012d}.delta").write_bytes(b"garbage")
        return size

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snap, "write", corrupting)
        drive(cp, 4, state)

    assert "not commit" in caplog.text and "the next full snapshot is written here" in caplog.text
    assert not cp.offload_failed  # the checkpointer's own full snapshot reset it
    assert latest(store).snapshot.commit_no == 6 and latest(store).snapshot.table == state.table


PARENT = """
import asyncio, sys
from wallaroo_runtime.compactor import Compactor

async def main():
    compactor = Compactor(sys.argv[1])
    await compactor.compact("none", 1, 0)  # nothing stored: starts the helper, compacts nothing
    print(compactor.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # exited, not yet reaped by whoever adopted it


def test_the_helper_exits_when_its_runner_is_sigkilled(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, f"file://{tmp_path}"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        helper = int(parent.stdout.readline())
        assert not gone(helper)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while not gone(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(helper), "the helper outlived its runner"


def test_a_helper_that_exits_fails_the_waiting_compaction(tmp_path: Path) -> None:
    compactor = Compactor(f"file://{tmp_path}", None, [sys.executable, "-c", DIES])

    with pytest.raises(CompactorError, match="exited with code 3"):
        compact_with(compactor)


GARBLES = "import sys; sys.stdin.readline(); sys.stdin.readline(); print('hello'); sys.stdin.read()"


def test_a_helper_that_writes_anything_but_replies_is_stopped(tmp_path: Path) -> None:
    compactor = Compactor(f"file://{tmp_path}", None, [sys.executable, "-c", GARBLES])

    with pytest.raises(CompactorError, match="exited with code -9"):
        compact_with(compactor)
