"""Snapshots on a real cluster: the owner writes checksummed, MACed snapshots to the state
store and trims its changelog; a SIGKILLed runner restores from snapshot + changelog tail; with
the changelog gone entirely, from the store alone; a forged snapshot (checksum recomputed, so
only the MAC catches it) is refused for the one before it. The whole output stays exactly-once."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest

from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.core.names import AppNames
from wallaroo.core.wire import CommitRecord, Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats
from wallaroo_runtime import snapshot
from wallaroo_runtime.statestore import FileStore

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "word_count" / "word_count.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon"]
EVERY = 4


def lines(rng: random.Random, n: int) -> list[bytes]:
    return [" ".join(rng.choice(WORDS) for _ in range(5)).encode() for _ in range(n)]


def expected(sent: list[bytes]) -> Counter[str]:
    words = Counter(w for line in sent for w in line.decode().split())
    return Counter(f"{w} => {i}" for w, c in words.items() for i in range(1, c + 1))


async def feed(nats: Nats, batch: list[bytes], tag: str, chunk: int = 40) -> Manifest:
    """Sent `chunk` lines at a time, each chunk processed before the next: each keyed
    partition then commits at least once a chunk, whatever batches the runner forms (one
    send of all, taken in a few fetches, made as few as 4 commits)."""
    manifest = await apps.deploy(nats, APP)
    for i in range(0, len(batch), chunk):
        await ingest.send(nats, manifest, "lines", batch[i:i + chunk], f"{tag}.{i}", batch_size=5)
        await apps.wait_idle(nats, manifest, timeout=60)
    return manifest


async def changelog_records(nats: Nats, slug: str, stage: int, part: int) -> int:
    names = AppNames(slug)
    last = await nats.last_on_subject(names.log_stream, names.log(stage, part))
    if last is None:
        return 0
    return len([m async for m in nats.read_subject(names.log_stream, names.log(stage, part), last.seq)])


def test_snapshots_trim_the_changelog_and_restore_after_sigkill_and_log_loss(tmp_path: Path) -> None:
    rng = random.Random(7)
    sent: list[bytes] = []
    store = tmp_path / "store"

    async def round_(cluster: DevCluster, n: int) -> tuple[Manifest, list[str], Nats]:
        nats = await Nats.connect(cluster.url)
        batch = lines(rng, n)
        sent.extend(batch)
        m = await feed(nats, batch, f"t{len(sent)}")
        return m, (await collect_outputs(nats, m))["counts"], nats

    async def body(cluster: DevCluster) -> list[str]:
        m, _, nats = await round_(cluster, 400)
        parts = range(m.partitions)
        commits = [await commit_count(nats, m.slug, 1, p) for p in parts]
        assert max(commits) > EVERY, commits
        # a snapshot every EVERY commits (jittered up to 1.5x); the changelog keeps only the
        # commits after the newest one. The trim follows each snapshot's write, so a write
        # still in flight when the round went idle leaves its commits there a moment longer.
        await changelog_trimmed(nats, m.slug, parts, round(EVERY * 1.5), commits)
        assert list(store.glob("snapshots/word_count/1/*/*.snap")), "no snapshot written"
        await nats.close()

        cluster.restart_runner(0, kill=True)
        m, _, nats = await round_(cluster, 200)
        await snapshots_current(nats, store, m)  # the idle snapshot covers the last commit
        await nats.delete_stream(AppNames(m.slug).log_stream)  # the changelog is lost
        await nats.close()

        cluster.restart_runner(0, kill=True)
        m, outputs, nats = await round_(cluster, 200)
        await nats.close()
        return outputs

    runner_args = ["--snapshot-every", str(EVERY), "--snapshot-seconds", "0.5"]
    with DevCluster(tmp_path / "c", member_ttl=1.0, state_store=f"file://{store}",
                    runner_args=runner_args) as cluster:
        outputs = asyncio.run(body(cluster))
    got, want = Counter(outputs), expected(sent)
    assert got == want, f"missing {list(want - got)[:5]}, extra {list(got - want)[:5]}"


async def commit_count(nats: Nats, slug: str, stage: int, part: int) -> int:
    """The partition's newest commit number: how many commits it has made."""
    names = AppNames(slug)
    last = await nats.last_on_subject(names.log_stream, names.log(stage, part))
    return CommitRecord.from_wire(last.data).commit_no if last else 0


async def changelog_trimmed(nats: Nats, slug: str, parts: range, most: int,
                            commits: list[int], timeout: float = 10) -> None:
    """Until no partition's changelog keeps more than `most` records."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (kept := [await changelog_records(nats, slug, 1, p) for p in parts]) and max(kept) > most:
        assert asyncio.get_running_loop().time() < deadline, (kept, commits)
        await asyncio.sleep(0.05)


async def snapshots_current(nats: Nats, store: Path, m: Manifest, timeout: float = 30) -> None:
    """Until every partition's newest snapshot holds its newest commit."""
    file_store = FileStore(store)
    deadline = asyncio.get_running_loop().time() + timeout
    for st in m.stages:
        for p in range(st.partitions):
            want = await commit_count(nats, m.slug, st.index, p)
            while want and (await _snapshot_commit(file_store, m.slug, st.index, p)) < want:
                assert asyncio.get_running_loop().time() < deadline, f"no current snapshot {st.index}.{p}"
                await asyncio.sleep(0.05)


async def _snapshot_commit(store: FileStore, slug: str, stage: int, part: int) -> int:
    latest = await snapshot.latest_valid(store, slug, stage, part)
    return latest.commit_no if latest else 0


def test_a_forged_snapshot_is_refused_by_its_mac_and_the_ones_before_used(tmp_path: Path) -> None:
    rng = random.Random(11)
    sent: list[bytes] = []
    store = tmp_path / "store"

    async def rounds(cluster: DevCluster, sizes: list[int], deploy: bool = False) -> list[str]:
        """Per round: send, wait until processed and snapshotted. Deployed once only: a
        version switch restarts the workers, and a stateless one snapshots only what it
        commits after that."""
        nats = await Nats.connect(cluster.url)
        try:
            m = await (apps.deploy(nats, APP) if deploy else apps.manifest_of(nats, "word_count"))
            for n in sizes:
                sent.extend(batch := lines(rng, n))
                await ingest.send(nats, m, "lines", batch, f"t{len(sent)}", batch_size=5)
                await apps.wait_idle(nats, m, timeout=60)
                await snapshots_current(nats, store, m)
            return (await collect_outputs(nats, m))["counts"]
        finally:
            await nats.close()

    runner_args = ["--snapshot-every", str(EVERY), "--snapshot-seconds", "0.5"]
    with DevCluster(tmp_path / "c", member_ttl=1.0, state_store=f"file://{store}",
                    runner_args=runner_args) as cluster:
        asyncio.run(rounds(cluster, [150, 150], deploy=True))  # two current snapshots each
        cluster.scale_to(0)  # stopped: nothing writes the store while it is forged
        forged = forge_newest_snapshot(store / "snapshots" / "word_count" / "1")
        cluster.scale_to(1)  # a new runner restores every partition
        outputs = asyncio.run(rounds(cluster, [100]))
        logs = "".join(p.read_text() for p in (tmp_path / "c" / "logs").glob("r*.log"))

    assert f"{forged.relative_to(store)} fails its MAC check" in logs
    got, want = Counter(outputs), expected(sent)
    assert got == want, f"missing {list(want - got)[:5]}, extra {list(got - want)[:5]}"


def forge_newest_snapshot(stage_dir: Path) -> Path:
    """Roll one key's state in a partition's newest snapshot (full or delta) back to what an
    earlier snapshot held, and recompute the checksum: what someone who can write the store but
    holds no state key can do. Restored, it would repeat that word's counts. Returns the file
    forged."""
    for part in sorted(stage_dir.iterdir()):
        *earlier, newest = sorted(part.glob("*.*"), key=lambda p: (p.stem, p.suffix == ".delta"))
        envelope = msgpack.unpackb(newest.read_bytes())
        body = msgpack.unpackb(envelope["body"])
        table = table_of(body)
        for older in reversed(earlier):
            old_table = table_of(msgpack.unpackb(msgpack.unpackb(older.read_bytes())["body"]))
            changed = [k for k, v in table.items() if old_table.get(k, v) != v]
            if changed:
                break
        else:
            continue
        table[changed[0]] = old_table[changed[0]]
        body["table"] = [msgpack.packb(table, use_bin_type=True)]
        envelope["body"] = msgpack.packb(body, use_bin_type=True)
        envelope["sha256"] = hashlib.sha256(envelope["body"]).digest()
        assert "mac" in envelope, "runners of a DevCluster MAC their snapshots"
        newest.write_bytes(msgpack.packb(envelope, use_bin_type=True))
        return newest
    raise AssertionError("no key changed between a partition's snapshots")


def table_of(body: dict[str, Any]) -> dict[str, bytes]:
    """A snapshot body's table: stored in msgpack chunks (format version 2)."""
    return {k: v for chunk in body["table"] for k, v in msgpack.unpackb(chunk).items()}
