"""Serverless functions on a real nats-server and real runner processes: delivery, results
written once, idempotency keys, the two retry budgets, timeouts, cancel, user code off the
event loop, deploys, and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import wallaroo
from wallaroo.control import apps
from wallaroo.control.status import wait_rollout
from wallaroo.core import calls, observe
from wallaroo.core.errors import NotJsonError
from wallaroo.core.packaging import load_deployable
from wallaroo.core.wire import CallResult
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

HERE = Path(__file__).parent
APP = HERE / "apps" / "functions_app.py"
V1, V2 = HERE / "apps" / "versions" / "fnver_v1.py", HERE / "apps" / "versions" / "fnver_v2.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def deploy(url: str, app_file: Path) -> None:
    async def body() -> None:
        nats = await Nats.connect(url)
        try:
            manifest = await apps.deploy(nats, app_file)
            state = await wait_rollout(nats, manifest, 60, min_ready=1)
            assert state.done and not state.failed, state
        finally:
            await nats.close()

    asyncio.run(body())


def on_nats(url: str, fn: Callable[[Nats], Any]) -> Any:
    async def body() -> Any:
        nats = await Nats.connect(url)
        try:
            return await fn(nats)
        finally:
            await nats.close()

    return asyncio.run(body())


def eventually(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.05)


@contextlib.contextmanager
def own_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_file: Path = APP,
                runners: int = 1, runner_args: tuple[str, ...] = ()
                ) -> Iterator[tuple[DevCluster, ModuleType]]:
    """A cluster of this test's own (it kills or replaces runners), the app deployed, and the
    app module whose Function handles call it."""
    with DevCluster(tmp_path / "c", runners=runners, member_ttl=1.0, runner_args=runner_args) as c:
        monkeypatch.setenv("WALLAROO_NATS", c.url)
        deploy(c.url, app_file)
        _, module = load_deployable(app_file)
        try:
            yield c, module
        finally:
            calls.close_portals()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("fn") / "c", runners=2) as c:
        deploy(c.url, APP)
        yield c


@pytest.fixture
def fns(cluster: DevCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The app module, its Function handles calling the module's cluster."""
    monkeypatch.setenv("WALLAROO_NATS", cluster.url)
    _, module = load_deployable(APP)
    yield module
    calls.close_portals()


def stored(url: str, call_id: str) -> CallResult | None:
    return on_nats(url, lambda n: calls.CallClient(n).stored(call_id))  # type: ignore[no-any-return]


def test_remote_map_and_spawn_return_the_results(fns: ModuleType, cluster: DevCluster) -> None:
    assert fns.square.remote(4) == 16
    assert list(fns.square.map(range(50))) == [x * x for x in range(50)]
    assert sorted(fns.square.map(range(50), order_outputs=False)) == sorted(x * x for x in range(50))
    assert list(fns.square.starmap([(3,), (5,)])) == [9, 25]
    call = fns.square.spawn(7)
    assert isinstance(call, wallaroo.FunctionCall) and call.get(timeout=30) == 49
    # Durable: in the results bucket, readable by id from another connection.
    result = stored(cluster.url, call.object_id)
    assert result is not None and result.status == "ok" and calls.unwrap(result) == 49
    assert wallaroo.FunctionCall.from_id(call.object_id).get(timeout=5) == 49


def test_aio_variants(fns: ModuleType, tmp_path: Path) -> None:
    async def body() -> tuple[int, int, list[int], list[int]]:
        value = await fns.square.remote.aio(6)
        call = await fns.square.spawn.aio(8)
        mapped = [x async for x in fns.square.map.aio(range(5))]
        starmapped = [x async for x in fns.square.starmap.aio([(2,), (3,)])]
        await fns.append_id.for_each.aio([str(tmp_path / "ids")] * 3, range(3))
        return value, await call.get.aio(timeout=30), mapped, starmapped

    assert asyncio.run(body()) == (36, 64, [0, 1, 4, 9, 16], [4, 9])
    assert len((tmp_path / "ids").read_text().splitlines()) == 3


def test_lookup_finds_deployed_functions_and_names_missing_ones(fns: ModuleType) -> None:
    assert wallaroo.Function.lookup("fntest", "square").remote(3) == 9
    assert wallaroo.Function.lookup("fntest", "Model.predict").remote(2)[2] == 4
    with pytest.raises(wallaroo.WallarooError, match="no function named 'nope'.*square"):
        wallaroo.Function.lookup("fntest", "nope")
    with pytest.raises(wallaroo.WallarooError, match="no app named 'nosuchapp'"):
        wallaroo.Function.lookup("nosuchapp", "square")


def test_user_errors_keep_their_type_and_the_remote_traceback(fns: ModuleType) -> None:
    with pytest.raises(ValueError, match="bad input") as err:
        fns.boom.remote("bad input")
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "remote traceback" in notes and "in boom" in notes and "ValueError: bad input" in notes
    with pytest.raises(wallaroo.RemoteError) as remote:
        fns.custom_boom.remote()
    assert remote.value.type_name.endswith("AppSpecificError")
    assert "only the runner knows this class" in str(remote.value)


def test_user_exceptions_are_retried_per_the_policy(fns: ModuleType, tmp_path: Path) -> None:
    assert fns.flaky.remote(str(tmp_path / "a"), 2) == 3  # failed twice, third attempt won
    with pytest.raises(ConnectionError, match="attempt 3 fails"):
        fns.flaky.remote(str(tmp_path / "b"), 5)  # max_retries=2: three attempts in all
    assert (tmp_path / "b").read_text() == "3"


def test_an_attempt_past_its_timeout_fails_with_function_timeout(fns: ModuleType,
                                                                 cluster: DevCluster) -> None:
    call = fns.sleepy.spawn(3.0)
    with pytest.raises(wallaroo.FunctionTimeout, match="timeout of 0.5s"):
        call.get(timeout=30)
    result = stored(cluster.url, call.object_id)
    assert result is not None and result.attempts == 2  # retries=1: tried twice
    assert fns.sleepy.remote(0.01) == 0.01


def test_get_with_a_timeout_only_stops_waiting(fns: ModuleType) -> None:
    call = fns.nap.spawn(1.0)
    with pytest.raises(TimeoutError):
        call.get(timeout=0)
    with pytest.raises(TimeoutError):
        call.get(timeout=0.1)
    assert call.get(timeout=30) == "rested"


def test_current_call_gives_the_call_id_and_attempt(fns: ModuleType) -> None:
    call = fns.whoami.spawn()
    call_id, attempt, delivery, _ = call.get(timeout=30)
    assert (call_id, attempt, delivery) == (call.object_id, 1, 1)


def test_a_class_enters_once_per_runner_and_serves_its_methods(fns: ModuleType) -> None:
    model = fns.Model()
    outs = [model.predict.remote(x) for x in range(6)]
    assert [o[2] for o in outs] == [0, 2, 4, 6, 8, 10]
    by_pid: dict[int, list[int]] = {}
    for pid, n, _ in outs:
        by_pid.setdefault(pid, []).append(n)
    for counts in by_pid.values():  # one instance per runner: its counter only grows
        assert counts == sorted(counts) and len(set(counts)) == len(counts)
    with pytest.raises(AttributeError, match="no method 'train'"):
        model.train  # noqa: B018 - the attribute access is what fails


def test_large_arguments_and_results_go_through_the_object_store(fns: ModuleType,
                                                                 cluster: DevCluster) -> None:
    call = fns.big.spawn(2_000_000)
    assert call.get(timeout=30) == b"x" * 2_000_000
    result = stored(cluster.url, call.object_id)
    assert result is not None and result.value_ref and not result.value  # not inline in KV
    assert fns.length.remote(b"y" * 3_000_000) == 3_000_000


class _Planted:
    """Unpickling it writes a file (a stand-in for any code a pickle can run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.path, "ran"))


def test_a_json_function_takes_json_and_refuses_pickled_arguments_unread(
        fns: ModuleType, cluster: DevCluster, tmp_path: Path) -> None:
    assert fns.tally.remote({"a": 1, "b": 2}, bonus=4) == {"a": 1, "b": 2, "total": 7}
    assert list(fns.tally.map([{"x": 1}, {"y": 2}])) == [{"x": 1, "total": 1}, {"y": 2, "total": 2}]
    with pytest.raises(NotJsonError, match=r"an argument of fntest\.tally is not JSON"):
        fns.tally.remote({"a": {1, 2}})
    assert wallaroo.Function.lookup("fntest", "tally").serializer == "json"

    async def hostile_call(function: str, marker: Path) -> CallResult:
        nats = await Nats.connect(cluster.url, creds=cluster.creds("client"))
        try:
            payload = pickle.dumps(((_Planted(marker),), {}))
            return await calls.CallClient(nats).call("fntest", function, payload)
        finally:
            await nats.close()

    # The threat: with the client role's right to call, a pickle runs on a runner.
    ran = tmp_path / "square-ran"
    asyncio.run(hostile_call("square", ran))
    assert ran.read_text() == "ran"
    # A serializer="json" function refuses the same bytes without unpickling them.
    refused = tmp_path / "tally-ran"
    result = asyncio.run(hostile_call("tally", refused))
    assert result.status == "error" and result.error_type.endswith("PickledArgumentsRefused")
    assert "takes JSON arguments only" in result.error_message
    assert not refused.exists()


def test_idempotency_key_runs_once_attaches_and_refuses_other_arguments(fns: ModuleType,
                                                                         tmp_path: Path) -> None:
    ids = tmp_path / "ids"
    keyed = fns.append_id.with_options(idempotency_key="order-17")
    first = keyed.spawn(str(ids), 1)
    second = keyed.spawn(str(ids), 1)  # a duplicate: the same call
    assert first.object_id == second.object_id
    assert first.get(timeout=30) == 1 and keyed.remote(str(ids), 1) == 1
    assert ids.read_text().splitlines() == [first.object_id]
    with pytest.raises(wallaroo.IdempotencyConflict, match="order-17"):
        keyed.remote(str(ids), 2)
    other = fns.append_id.with_options(idempotency_key="order-18")
    assert other.remote(str(ids), 2) == 2 and len(ids.read_text().splitlines()) == 2


def test_cancel_an_unstarted_call_never_runs_and_a_running_async_call_stops(
        fns: ModuleType, tmp_path: Path) -> None:
    running = fns.nap.spawn(3.0, str(tmp_path / "running"))
    eventually(lambda: _is_running(running.object_id, fns), "the call to start", 15)
    running.cancel()
    with pytest.raises(wallaroo.CallCancelled):
        running.get(timeout=30)
    cancelled_first = wallaroo.FunctionCall.from_id(calls.new_call_id())
    cancelled_first.cancel()  # a call cancelled before anyone made it: it never runs
    with pytest.raises(wallaroo.CallCancelled):
        cancelled_first.get(timeout=5)
    time.sleep(3.5)  # the cancelled nap would have written its marker by now
    assert not (tmp_path / "running").exists()


def test_a_call_cancelled_while_it_waits_for_a_slot_never_runs(fns: ModuleType,
                                                              tmp_path: Path) -> None:
    blockers = [fns.queued.spawn(str(tmp_path / f"blocker{i}"), 2.0) for i in range(2)]
    eventually(lambda: all((tmp_path / f"blocker{i}").exists() for i in range(2)),
               "both runners busy", 15)
    waiting = fns.queued.spawn(str(tmp_path / "waiting"), 0.0)
    waiting.cancel()
    with pytest.raises(wallaroo.CallCancelled):
        waiting.get(timeout=30)
    assert [b.get(timeout=30) for b in blockers]
    follow_up = fns.queued.remote(str(tmp_path / "after"), 0.0)  # the slot is free again
    assert follow_up.endswith("after") and not (tmp_path / "waiting").exists()


def _is_running(call_id: str, fns: ModuleType) -> bool:
    url = os.environ["WALLAROO_NATS"]
    beats = on_nats(url, observe.runner_heartbeats)
    return any(f.running for b in beats for a in b.apps.values() for f in a.functions.values())


def test_a_sync_call_cancelled_while_running_has_its_result_discarded(fns: ModuleType,
                                                                    tmp_path: Path) -> None:
    call = fns.sleepy.spawn(0.4)
    eventually(lambda: _is_running(call.object_id, fns), "the call to start", 15)
    call.cancel()
    with pytest.raises(wallaroo.CallCancelled):
        call.get(timeout=30)
    result = stored(os.environ["WALLAROO_NATS"], call.object_id)
    assert result is not None and result.status == "cancelled"


def test_the_cli_calls_shows_and_cancels(cluster: DevCluster, tmp_path: Path) -> None:
    env = {**os.environ, "WALLAROO_NATS": cluster.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wallaroo", *args], env=env, text=True,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
                              cwd=tmp_path)

    assert cli("call", "fntest", "square", "12").stdout.strip() == "144"
    assert json.loads(cli("call", "fntest", "Model.predict", "5").stdout)[2] == 10
    spawned = cli("call", "fntest", "square", "3", "--spawn")
    call_id = spawned.stdout.strip()
    assert call_id.startswith("fc-"), spawned.stderr
    eventually(lambda: "value: 9" in cli("calls", "show", call_id).stdout, "the spawned call")
    failed = cli("call", "fntest", "boom", "no")
    assert failed.returncode == 1 and "boom raised ValueError: no" in failed.stderr
    assert "Traceback" not in failed.stderr and "calls show fc-" in failed.stderr
    timed_out = cli("call", "fntest", "sleepy", "3")
    assert timed_out.returncode == 1 and "sleepy raised FunctionTimeout" in timed_out.stderr
    assert "Traceback" not in timed_out.stderr
    bad = cli("call", "fntest", "square", "{oops")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    unknown = cli("call", "fntest", "cube", "2")
    assert unknown.returncode == 1 and "no function named 'cube'" in unknown.stderr
    done = cli("calls", "cancel", call_id)
    assert done.returncode == 1 and "already finished (ok)" in done.stderr
    table = cli("status").stdout
    header = next(line for line in table.splitlines() if line.startswith("app ") and "p99 ms" in line)
    row = next(line for line in table.splitlines() if line.split()[:2] == ["fntest", "square"]).split()
    assert header.split()[5] == "done" and int(row[5]) >= 2, table


def test_wallaroo_run_deploys_runs_the_entrypoint_and_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WALLAROO_NATS"}
    res = subprocess.run([sys.executable, "-m", "wallaroo", "run", str(APP)], env=env, text=True,
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["16", str([x * x for x in range(10)]),
                                       "caught AppSpecificError: only the runner knows this class"]
    url = res.stderr.split("nats-server at ")[1].split(",")[0].removeprefix("nats://")
    assert subprocess.run(["pgrep", "-f", url], capture_output=True).returncode == 1


def test_a_new_version_serves_new_calls_while_running_ones_finish_on_the_old(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with own_cluster(tmp_path, monkeypatch, V1, runners=1) as (c, v1):
        gate = tmp_path / "gate"
        held = v1.version.spawn(str(gate))  # version 1 holds this call until the gate opens
        eventually(lambda: _is_running(held.object_id, v1), "the v1 call to start", 15)
        deploy(c.url, V2)
        # answered while the v1 call is still held: new calls do not wait for the old version
        assert v1.version.remote() == 2
        assert stored(c.url, held.object_id) is None, "the v1 call ended before its gate opened"
        eventually(lambda: _is_running(held.object_id, v1), "status to count the v1 call", 15)
        gate.touch()
        assert held.get(timeout=30) == 1


def test_calls_of_a_runner_that_keeps_dying_end_in_runner_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Infrastructure redeliveries have their own budget: past it, a RunnerLost result,
    never JetStream's silent max_deliver drop."""
    args = ("--call-ack-wait", "1", "--call-max-deliveries", "2")
    with own_cluster(tmp_path, monkeypatch, runners=3, runner_args=args) as (c, fns):
        with pytest.raises(wallaroo.RunnerLost, match="started 2 times"):
            fns.die.remote()
        assert sum(1 for r in c.runners if not r.alive) == 2


def test_results_survive_a_runner_sigkill_and_the_call_runs_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At-least-once execution, exactly-once result: the runner running the call is killed,
    another runs it again (delivery 2) and that one result is what every caller sees."""
    args = ("--call-ack-wait", "1")
    with own_cluster(tmp_path, monkeypatch, runners=2, runner_args=args) as (c, fns):
        ids = tmp_path / "ids"
        call = fns.slow_append.spawn(str(ids), 2.0)
        # the file is created before its line is written: wait for the whole line
        eventually(lambda: ids.exists() and ids.read_text().endswith("\n"), "the first run to start", 15)
        victim = int(ids.read_text().split()[1])
        next(r for r in c.runners if r.proc is not None and r.proc.pid == victim).kill()
        value = call.get(timeout=60)
        runs = ids.read_text().splitlines()
        assert len(runs) == 2 and {r.split()[0] for r in runs} == {call.object_id}
        assert value == runs[1]  # the second run's result, the only one recorded
        assert wallaroo.FunctionCall.from_id(call.object_id).get(timeout=5) == value
        result = stored(c.url, call.object_id)
        assert result is not None and result.deliveries == 2


def test_a_call_blocking_for_seconds_never_stalls_the_runners_heartbeat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Member TTL 1 s, a 10 s CPU-bound call: the runner stays a member throughout."""
    with own_cluster(tmp_path, monkeypatch, runners=1) as (c, fns):
        call = fns.spin.spawn(10.0)
        seen: list[bool] = []
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            beats = on_nats(c.url, observe.runner_heartbeats)
            seen.append(len(beats) == 1 and time.time() - beats[0].ts < 1.0)
            time.sleep(0.2)
        assert call.get(timeout=30) > 0
        assert all(seen), f"membership lapsed in {seen.count(False)} of {len(seen)} probes"


def test_cancel_with_terminate_replaces_the_runner_process_running_a_sync_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with own_cluster(tmp_path, monkeypatch, runners=1) as (c, fns):
        call = fns.sleeper.spawn(str(tmp_path / "woke"), 30.0)
        eventually(lambda: _is_running(call.object_id, fns), "the call to start", 15)
        old = c.runners[0].proc
        assert old is not None
        call.cancel(terminate=True)
        with pytest.raises(wallaroo.CallCancelled):
            call.get(timeout=30)

        def replaced() -> bool:
            c.check_runners()  # what `wallaroo dev` does: a runner asking for it is replaced
            new = c.runners[0].proc
            return new is not None and new.pid != old.pid and c.runners[0].alive

        eventually(replaced, "a fresh runner process", 30)
        assert old.returncode == 75  # it asked to be replaced, it did not crash
        assert fns.square.remote(3) == 9  # the fresh process serves calls
        assert not (tmp_path / "woke").exists()  # the thread died with its process


def test_a_timed_out_sync_call_does_not_keep_its_slot(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Its thread cannot be stopped and runs on; the next call must still start at once."""
    with own_cluster(tmp_path, monkeypatch, runners=1) as (_, fns):
        gate = tmp_path / "gate"
        with pytest.raises(wallaroo.FunctionTimeout):
            fns.single_slot.remote(str(gate))  # its thread waits on for the closed gate
        assert fns.single_slot.remote("") == ""  # served while that thread still runs
        gate.touch()
