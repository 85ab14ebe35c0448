"""The sequence-window app survives failures, as in Wallaroo's correctness suite. Each test
streams 20 keys x 400 values in order over ~6 s into real runner processes on a real
nats-server, injects its failure mid-stream, then checks the WHOLE output with the
sequence validator: per key, every window is the previous one shifted by one value, with no
gap, no duplicate, no reorder and no lost state, ending at the last value. That is exactly
once, per-key order and state kept, all at once.

Seeded: the seed is printed; replay a run with WALLAROO_CHAOS_SEED=<seed>."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest
from chaos_support import seeded
from sequence_chaos import (
    APP_V2,
    KEYED_STAGE,
    SLUG,
    TTL,
    Stream,
    all_run_version,
    by_id,
    check_windows,
    eventually,
    leases,
    log_after,
    log_subject,
    progress,
    run_scenario,
)

from wallaroo.control import apps
from wallaroo.core.names import LEASES_BUCKET, MEMBERS_BUCKET, AppNames
from wallaroo.local.auth import dev_auth
from wallaroo.local.dev import DevCluster, DevKeys, RunnerPool
from wallaroo.local.natsserver import NatsCluster, NatsServer
from wallaroo.nats import Nats

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
NAMES = AppNames(SLUG)


async def none_held_by(nats: Nats, slug: str, dead: set[str]) -> bool:
    """Every partition lease is held by a live runner (the dead ones' were taken over)."""
    held = await leases(nats, slug)
    return bool(held) and not dead & set(held.values())


def test_a_runner_sigkilled_mid_stream(tmp_path: Path) -> None:
    """Proves: the partitions of a runner that dies without a goodbye move to the two others,
    which restore its windows from the changelog and go on exactly once, in order."""
    seed, rng = seeded()

    async def chaos(s: Stream) -> None:
        await progress(s)
        await asyncio.sleep(rng.uniform(0.0, 2.0))  # where in the stream the kill lands
        victim = rng.choice(cluster.runners)
        s.mid_stream("the kill")
        victim.kill()
        print(f"SIGKILLed {victim.runner_id}")
        await eventually(lambda: none_held_by(s.nats, s.slug, {victim.runner_id}), 30,
                         "the dead runner's partitions taken over")
        await progress(s)

    with DevCluster(tmp_path / "c", runners=3, member_ttl=TTL) as cluster:
        lines = asyncio.run(run_scenario(cluster.url, chaos, spread=3))
    check_windows(lines, seed)


def test_two_runners_sigkilled_at_the_same_instant(tmp_path: Path) -> None:
    """Proves: losing two of three runners at once (maybe the leader among them) loses
    nothing: the survivor takes every partition, the restarted pair gets its share back
    through the ordinary handoff, and the output stays exactly once, in order."""
    seed, rng = seeded()

    async def chaos(s: Stream) -> None:
        await progress(s)
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        pair = sorted(rng.sample(range(3), 2))
        dead = {cluster.runners[i].runner_id for i in pair}
        s.mid_stream("the kills")
        for i in pair:  # both signals leave before either process is reaped
            cluster.runners[i].signal(signal.SIGKILL)
        for i in pair:
            cluster.restart_runner(i, kill=True)
        print(f"SIGKILLed {sorted(dead)} at once; restarted as "
              f"{[cluster.runners[i].runner_id for i in pair]}")
        await eventually(lambda: none_held_by(s.nats, s.slug, dead), 30,
                         "the dead runners' partitions taken over")
        await progress(s)

    with DevCluster(tmp_path / "c", runners=3, member_ttl=TTL) as cluster:
        lines = asyncio.run(run_scenario(cluster.url, chaos, spread=3))
    check_windows(lines, seed)


def test_a_runner_sigkilled_while_it_restores_a_taken_over_partition(tmp_path: Path) -> None:
    """Failure during recovery. Proves: a runner that dies after taking over a dead runner's
    partition, before it has finished restoring it, leaves nothing half-done: a third owner
    restores the partition again and the output is still exactly once, in order, with every
    window intact. The test asserts that the second kill did land inside the restore."""
    seed, rng = seeded()
    logs = tmp_path / "c" / "logs"

    async def chaos(s: Stream) -> None:
        await progress(s)
        await asyncio.sleep(rng.uniform(1.0, 2.0))  # a longer changelog: a longer restore
        held = await leases(s.nats, s.slug, KEYED_STAGE)
        first = rng.choice(sorted(set(held.values())))
        theirs = sorted(k for k, v in held.items() if v == first)
        s.mid_stream("the first kill")
        cluster.runners[by_id(cluster.runners, first)].kill()
        committed = {k: await changelog_end(s.nats, k) for k in theirs}  # frozen: no owner
        key, taker = await first_takeover(s.nats, theirs, first)
        cluster.runners[by_id(cluster.runners, taker)].kill()  # it holds the lease it just took
        print(f"SIGKILLed {first} (held {theirs}); then {taker}, which had just taken {key}")
        assert await changelog_end(s.nats, key) == committed[key], (
            f"{taker} committed to {key} before it died: the second kill came after the takeover")
        assert not restored_after_takeover(logs / f"{taker}.log", key, first), (
            f"the second kill landed after {taker} had restored {key}, not during the restore")
        s.mid_stream("the second kill")
        for runner_id in (first, taker):
            cluster.restart_runner(by_id(cluster.runners, runner_id), kill=True)
        await eventually(lambda: none_held_by(s.nats, s.slug, {first, taker}), 30,
                         "both dead runners' partitions taken over")
        # also shows the log lines relied on above are still the runtime's own
        await eventually(lambda: _restored_by_any(logs, key, taker), 30,
                         f"a third runner restored {key} after taking it from {taker}")
        await progress(s)

    with DevCluster(tmp_path / "c", runners=3, member_ttl=TTL) as cluster:
        lines = asyncio.run(run_scenario(cluster.url, chaos, spread=3))
    check_windows(lines, seed)


def restored_after_takeover(log_file: Path, lease_key: str, previous: str) -> bool:
    """Whether the runner logging to `log_file` took `lease_key` over from `previous` and
    then finished restoring that partition. Fails if its log shows no such takeover."""
    after = log_after(log_file, f"takes lease {lease_key} from {previous}")
    assert after is not None, f"{log_file.name} shows no takeover of {lease_key} from {previous}"
    return any(f"{log_subject(lease_key)}: restored" in line for line in after)


async def _restored_by_any(logs: Path, lease_key: str, previous: str) -> bool:
    marker = f"takes lease {lease_key} from {previous}"
    return any(restored_after_takeover(f, lease_key, previous)
               for f in logs.glob("*.log") if marker in f.read_text(errors="replace"))


async def changelog_end(nats: Nats, lease_key: str) -> int:
    """The sequence of the newest commit record of the partition `lease_key` names."""
    last = await nats.last_on_subject(NAMES.log_stream, log_subject(lease_key))
    return last.seq if last else 0


async def first_takeover(nats: Nats, keys: list[str], dead: str, timeout: float = 15.0
                         ) -> tuple[str, str]:
    """(lease key, new holder) as soon as another runner holds one of the dead runner's
    leases. Polls only those keys, back to back: the restore that follows lasts tens of ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for key in keys:
            raw = await nats.kv_get(LEASES_BUCKET, key)
            if raw is not None and raw.decode() != dead:
                return key, raw.decode()
    raise AssertionError(f"no runner took over {keys} from {dead} within {timeout}s")


def test_a_nats_node_sigkilled_mid_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Proves: with every stream and bucket replicated on a 3-node NATS cluster
    (WALLAROO_REPLICAS=3), SIGKILLing a node mid-stream (not the input stream's leader: see
    the next test) stalls processing only while JetStream elects new leaders for what it
    led (changelog, output, buckets, consumers, the meta layer); processing then continues,
    and the output is exactly once, in order, with every window intact."""
    seed, rng = seeded()
    check_windows(node_loss(tmp_path, monkeypatch, rng, kill_input_leader=False), seed)


def test_the_nats_node_leading_the_input_stream_sigkilled_mid_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proves (once fixed): losing the node that leads the input stream, killed between two
    input messages, only delays the input: sending resumes once a new leader is elected,
    and the output is exactly once, in order, with every window intact."""
    seed, rng = seeded()
    check_windows(node_loss(tmp_path, monkeypatch, rng, kill_input_leader=True), seed)


def node_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: random.Random, *,
              kill_input_leader: bool) -> list[str]:
    """The sequence-window scenario on 2 runners over a 3-node NATS cluster. The runners and
    this test connect to one node that does not lead the input stream (a runner takes one
    URL); the node SIGKILLed mid-stream is the input stream's leader, or the third one."""
    monkeypatch.setenv("WALLAROO_REPLICAS", "3")  # for this process and the runners it starts
    with NatsCluster(tmp_path / "nats", auth=dev_auth(tmp_path)) as nc:
        asyncio.run(make_streams(nc.urls[0]))
        data_leader = nc.node(str(nc.stream_leader(NAMES.data_stream)))
        home = rng.choice([n for n in nc.nodes if n is not data_leader])
        third = next(n for n in nc.nodes if n not in (home, data_leader))
        victim = data_leader if kill_input_leader else third
        print(f"runners on {home.server_name}; {victim.server_name} dies "
              f"({data_leader.server_name} leads the input stream)")

        async def chaos(s: Stream) -> None:
            await progress(s)
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            led = sorted(k for k, v in nc.stream_leaders().items() if v == victim.server_name)
            meta = nc.meta_leader() == victim.server_name
            s.mid_stream("the node loss")
            async with s.sending:  # between two input messages: none is in flight
                sent = s.sent.records
                victim.kill()
                # and the next one goes out once `home` knows the node is gone
                await eventually(lambda: _routes_lost(home, victim), 10, "the dead node's routes closed")
            print(f"SIGKILLed nats node {victim.server_name}, leader of {led}"
                  + (" and of the meta layer" if meta else ""))
            # Why 45 s: new leaders take 4-9 s, consumers may wait for a new meta leader.
            took = await progress(s, timeout=45, sent=sent)
            print(f"progress again {took:.2f}s after the node loss")

        pool = RunnerPool(home.url, tmp_path / "logs", member_ttl=TTL, extra=runner_keys(tmp_path))
        try:
            asyncio.run(join_one_by_one(pool, home.url, 2))
            # Why 10 s of input: on three replicating nodes and two cores the first window
            # can take 4-5 s to come out, and the node must die while input still arrives.
            lines = asyncio.run(run_scenario(home.url, chaos, spread=2, seconds=10.0))
            pool.check()
        finally:
            pool.stop()
    return lines


def runner_keys(tmp_path: Path) -> list[str]:
    """--trust and --state-key for runners started without a DevCluster (which passes them)."""
    return DevKeys.ensure(tmp_path / "keys").runner_args()


async def _routes_lost(home: NatsServer, dead: NatsServer) -> bool:
    return dead.server_name not in home.route_names()


async def join_one_by_one(pool: RunnerPool, url: str, n: int) -> None:
    """Start `n` runners, each once the previous one is a member. Why not all at once: on a
    fresh cluster, a runner's first request about a bucket another runner has just created
    can go unanswered for 5 s, and a runner whose startup request times out exits (the bug
    test_a_runner_started_while_a_nats_node_is_down_joins reproduces deterministically)."""
    nats = await Nats.connect(url)
    try:
        for i in range(1, n + 1):
            pool.scale_to(i)
            await eventually(lambda i=i: _members_alive(pool, nats, i), 30, f"{i} runner(s) joined")
    finally:
        await nats.close()


async def _members_alive(pool: RunnerPool, nats: Nats, n: int) -> bool:
    pool.check()  # a runner that exited fails the test at once, naming its log
    return len(await nats.kv_keys(MEMBERS_BUCKET)) == n


async def make_streams(url: str) -> None:
    """The app's streams, created up front (replicated) so their leaders are known."""
    nats = await Nats.connect(url)
    try:
        await apps.ensure_streams(nats, SLUG)
    finally:
        await nats.close()


def test_a_runner_started_while_a_nats_node_is_down_joins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proves (once fixed): a runner started (by an autoscaler, or systemd after a crash)
    while a NATS node is down waits for JetStream to elect new leaders and then joins, like
    the runners that were already running."""
    monkeypatch.setenv("WALLAROO_REPLICAS", "3")
    with NatsCluster(tmp_path / "nats", auth=dev_auth(tmp_path)) as nc:
        members = f"KV_{MEMBERS_BUCKET}"
        pool = RunnerPool(nc.urls[0], tmp_path / "logs", member_ttl=TTL, extra=runner_keys(tmp_path))
        try:
            asyncio.run(join_one_by_one(pool, nc.urls[0], 1))  # it creates the buckets
            victim = nc.node(str(nc.stream_leader(members)))
            home = next(n for n in nc.nodes if n is not victim)
            pool.url = home.url  # the next runner connects to a node that stays up
            victim.kill()
            late = pool.add_runner()
            print(f"SIGKILLed {victim.server_name} (leader of {members}); started {late.runner_id} "
                  f"on {home.server_name}")
            asyncio.run(_joins(pool, home.url, late.runner_id))
        finally:
            pool.stop()


async def _joins(pool: RunnerPool, url: str, runner_id: str) -> None:
    nats = await Nats.connect(url)

    async def member() -> bool:
        pool.check()  # a runner that exited fails the test at once, naming its log
        return runner_id in await nats.kv_keys(MEMBERS_BUCKET)

    try:
        await eventually(member, 30, f"{runner_id} is a member")
    finally:
        await nats.close()


def test_a_new_version_deployed_mid_stream(tmp_path: Path) -> None:
    """Proves: deploying a new version of the app (same name and state, different code)
    mid-stream switches every runner between batches and keeps every key's window: no
    window restarts, none is lost or repeated."""
    seed, rng = seeded()

    async def chaos(s: Stream) -> None:
        await progress(s)
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        s.mid_stream("the upgrade")
        v2 = await apps.deploy(s.nats, APP_V2)
        assert (v2.slug, v2.version != s.manifest.version) == (s.slug, True)
        took = await eventually(lambda: all_run_version(s.nats, s.slug, v2.version, 3), 30,
                                "every runner runs version 2")
        print(f"deployed {v2.version} over {s.manifest.version}; all runners switched in {took:.2f}s")
        s.mid_stream("every runner switched")
        await progress(s)

    with DevCluster(tmp_path / "c", runners=3, member_ttl=TTL) as cluster:
        lines = asyncio.run(run_scenario(cluster.url, chaos, spread=3))
    check_windows(lines, seed)


def test_a_runner_started_after_a_new_version_restores_the_old_state(tmp_path: Path) -> None:
    """Proves (once fixed): after an upgrade, a runner that never ran the old version (here
    a SIGKILLed runner's replacement) restores state the old version wrote and goes on."""
    seed, rng = seeded()

    async def chaos(s: Stream) -> None:
        await progress(s)
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        s.mid_stream("the upgrade")
        v2 = await apps.deploy(s.nats, APP_V2)
        await eventually(lambda: all_run_version(s.nats, s.slug, v2.version, 3), 30,
                         "every runner runs version 2")
        victim = rng.randrange(3)
        s.mid_stream("the kill")
        fresh = cluster.restart_runner(victim, kill=True)
        print(f"upgraded to {v2.version}; SIGKILLed runner {victim}, replaced by {fresh.runner_id}")
        await progress(s)

    with DevCluster(tmp_path / "c", runners=3, member_ttl=TTL) as cluster:
        lines = asyncio.run(run_scenario(cluster.url, chaos, spread=3))
    check_windows(lines, seed)
