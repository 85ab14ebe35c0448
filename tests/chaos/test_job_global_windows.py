"""A job whose totals come from a global window (records combined per key ahead of the key_by,
one partial per key and batch crossing it): both runners SIGKILLed at once while the keyed
stage holds partial totals, then each new runner SIGKILLed again during its restore. The job
still ends with every word's total exact: no partial counted twice, none lost."""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path

import pytest

from wallaroo.control import apps, jobs
from wallaroo.core.names import AppNames
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

JOB = Path(__file__).parents[1] / "integration" / "apps" / "word_job.py"
LINES = 40_000  # 10 batches of the first stage (16 messages of 256 lines each)
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def words_file(path: Path) -> collections.Counter[str]:
    vocab = [f"w{i}" for i in range(40)]
    text = [" ".join(vocab[(i * 11 + j * 7) % 40] for j in range(6)) for i in range(LINES)]
    path.write_text("\n".join(text) + "\n")
    return collections.Counter(w for t in text for w in t.split())


async def deploy(nats: Nats, tmp_path: Path) -> Manifest:
    saved = dict(os.environ)
    # JOB_SLOW: a few ms per line in the first stage, so the kills land mid-job.
    os.environ.update(JOB_INPUT=str(tmp_path / "words.txt"), JOB_OUTPUT=str(tmp_path / "out.txt"),
                      JOB_MODE="totals", JOB_SLOW="0.0003")
    try:
        return await apps.deploy(nats, JOB)
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def keyed_commits(nats: Nats, manifest: Manifest) -> int:
    """Commits of the keyed stage (the global window) in the changelog so far."""
    names = AppNames(manifest.slug)
    return sum([await nats.subject_count(names.log_stream, names.log(1, p))
                for p in range(manifest.stages[1].partitions)])


async def wait_for(cond: object, what: str, timeout: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await cond():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.05)


def test_a_global_window_job_loses_and_repeats_nothing_when_runners_die(tmp_path: Path) -> None:
    expected = words_file(tmp_path / "words.txt")
    with DevCluster(tmp_path / "c", runners=2) as cluster:
        async def body() -> None:
            nats = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
            try:
                manifest = await deploy(nats, tmp_path)
                seen = 1
                for _ in range(2):  # partial totals committed; then more, after the restore
                    async def committed(n: int = seen) -> bool:
                        return await keyed_commits(nats, manifest) > n
                    await wait_for(committed, f"more than {seen} commit(s) of the keyed stage")
                    seen = await keyed_commits(nats, manifest)
                    state = await jobs.job_state(nats, manifest)
                    assert not state.finished, "the job ended before the kill: give it more input"
                    for i in range(2):  # both at once: no survivor holds the partials
                        cluster.restart_runner(i, kill=True)

                async def finished() -> bool:
                    return (await jobs.job_state(nats, manifest)).finished
                await wait_for(finished, "the job's end", timeout=300)
            finally:
                await nats.close()

        asyncio.run(body())
    out = (tmp_path / "out.txt").read_text().splitlines()
    totals = collections.Counter(line.split()[0] for line in out)
    assert [w for w, n in totals.items() if n > 1] == [], "a word's total was written twice"
    got = {w: int(n) for w, n in (line.split() for line in out)}
    assert got == dict(expected)
