"""Calls from stream steps under SIGKILL of runners. Proves, over the whole output: every record
is output exactly once; its call id is the one its partition derived for it (app, stage,
partition, record, call index), ran at least once (the function's own log shows it), and no
two records share one; per key, counts run 1..n: a batch run again after a crash attached to
the calls it made before instead of making new ones."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from chaos_support import eventually, seeded

from conftest import collect_outputs
from wallaroo.control import apps, ingest
from wallaroo.control.status import wait_rollout
from wallaroo.core.wire import Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APP = Path(__file__).parent / "apps" / "step_calls.py"
RECORDS = 3000
KILLS = 3
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


async def paced(nats: Nats, manifest: Manifest, records: list[bytes], seconds: float) -> None:
    step = max(1, len(records) // 60)
    for i in range(0, len(records), step):
        await ingest.send(nats, manifest, "in", records[i : i + step], f"p{i}", batch_size=10)
        await asyncio.sleep(seconds / 60)


async def outputs_so_far(nats: Nats, manifest: Manifest) -> int:
    return await nats.stream_last_seq(f"WL_{manifest.slug.upper()}_OUT")


async def chaos(cluster: DevCluster, rng: random.Random, records: list[bytes]) -> list[str]:
    nats = await Nats.connect(cluster.url)
    try:
        manifest = await apps.deploy(nats, APP)
        await wait_rollout(nats, manifest, 60, min_ready=2)
        sender = asyncio.create_task(paced(nats, manifest, records, seconds=12))
        for kill in range(KILLS):
            before = await outputs_so_far(nats, manifest)
            await eventually(lambda b=before: _grew(nats, manifest, b), 60, "progress")
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            victim = rng.randrange(len(cluster.runners))
            cluster.restart_runner(victim, kill=True)
            print(f"kill {kill + 1}/{KILLS}: runner {victim} SIGKILLed and replaced")
        await sender
        await apps.wait_idle(nats, manifest, timeout=180)
        return (await collect_outputs(nats, manifest))["out"]
    finally:
        await nats.close()


async def _grew(nats: Nats, manifest: Manifest, before: int) -> bool:
    return await outputs_so_far(nats, manifest) > before


def test_calls_from_stream_steps_are_exactly_once_per_record_under_sigkill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed, rng = seeded()
    log = tmp_path / "calls.log"
    monkeypatch.setenv("STEP_CALLS_LOG", str(log))
    keys = [f"k{i}" for i in range(40)]
    records = [f"{rng.choice(keys)}-{n}".encode() for n in range(RECORDS)]
    args = ["--call-ack-wait", "2"]
    with DevCluster(tmp_path / "c", runners=2, member_ttl=1.0, runner_args=args) as cluster:
        outputs = asyncio.run(chaos(cluster, rng, records))
    check(outputs, [r.decode() for r in records], log, seed)


def check(outputs: list[str], records: list[str], log: Path, seed: int) -> None:
    rows = [o.split("|") for o in outputs]
    got = Counter(r for r, _, _ in rows)
    assert got == Counter(records), f"seed {seed}: outputs are not each record exactly once"
    ran: dict[str, set[str]] = defaultdict(set)
    for line in log.read_text().splitlines():
        call_id, record = line.split(" ", 1)
        ran[call_id].add(record)
    ids = [c for _, c, _ in rows]
    assert len(set(ids)) == len(ids), f"seed {seed}: two records share a call"
    for record, call_id, _ in rows:
        assert ran.get(call_id) == {record}, f"seed {seed}: call {call_id} of {record} never ran"
    counts: dict[str, list[int]] = defaultdict(list)
    for record, _, n in rows:
        counts[record.split("-")[0]].append(int(n))
    for key, ns in counts.items():
        assert sorted(ns) == list(range(1, len(ns) + 1)), f"seed {seed}: key {key} counts {sorted(ns)}"
    assert all(c.startswith("fd-") for c in ids), "calls from steps must have derived ids"
    runs = len(log.read_text().splitlines())
    print(f"{len(ids)} records, {len(ran)} calls; {runs} runs ({runs - len(ran)} ran again)")
