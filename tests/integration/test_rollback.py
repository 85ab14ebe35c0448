"""`wallaroo rollback` and `wallaroo versions` as a user runs them: real nats-server with
authentication, real runner processes, the CLI as subprocesses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from test_cli import version_of, wallaroo

from conftest import collect_outputs
from wallaroo.control import apps
from wallaroo.local.dev import DevCluster
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats

APPS = Path(__file__).parent / "apps" / "versions"
V1, V2, WIDE = APPS / "counter_v1.py", APPS / "counter_v2.py", APPS / "counter_wide.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_rollback_runs_the_earlier_version_on_the_state_the_later_one_left(tmp_path: Path) -> None:
    """v1 counts, v2 (another format) counts on, rollback to v1: the counts go on across all
    three (keyed state kept) and the outputs after the rollback are in v1's format. Then a
    rollback the runners refuse exits 1, and one more rollback undoes it."""
    with DevCluster(tmp_path / "c", runners=2) as cluster:
        cli = ClusterCli(cluster, tmp_path)
        send_and_wait = cli.send_and_wait

        code, out1, err = cli("deploy", str(V1))
        assert code == 0, err
        send_and_wait(["a", "b", "a"], 3)
        code, out2, err = cli("deploy", str(V2))
        assert code == 0, err
        send_and_wait(["a", "b"], 5)
        v1, v2 = version_of(out1), version_of(out2)
        _, before, _ = cli("versions", "counter", role="client")

        code, rolled, err = cli("rollback", "counter")
        assert code == 0, err
        assert rolled == f"rolled counter back from version {v2} to {v1}\n"
        assert f"rollout: 2/2 runner(s) on {v1}" in err
        send_and_wait(["a", "c"], 7)
        _, after, _ = cli("versions", "counter", role="client")

        # The previous version of v1 is v2 now (undo toggles), here signed by a key the
        # runners do not trust: they refuse it, and rollback says so and exits 1.
        assert wallaroo("keys", "generate", "--dir", "foreign", cwd=tmp_path).returncode == 0
        code, _, refused = cli("rollback", "counter", "--key", str(tmp_path / "foreign" / "deploy.key"))
        # ... and rolling back again undoes the refused one: the runners never left v1.
        undo = cli("rollback", "counter")
        outputs = asyncio.run(read_outputs(cluster.url))

    assert sorted(outputs[:3]) == ["a => 1", "a => 2", "b => 1"]
    assert sorted(outputs[3:5]) == ["a: 3 (v2)", "b: 2 (v2)"]
    assert sorted(outputs[5:]) == ["a => 4", "c => 1"]
    assert rows_of(before) == [[v2, "1", "1+2", "current"], [v1, "1", "1+2", ""]]
    assert rows_of(after) == [[v1, "2", "1+2", "current"], [v2, "1", "1+2", ""]]
    assert code == 1
    for runner in ("r0", "r1"):
        assert f"error: runner {runner} refused {v2}: SignatureError: counter version {v2} is " \
               "signed with key ed25519:" in refused
    assert undo[0] == 0 and undo[1] == f"rolled counter back from version {v2} to {v1}\n", undo
    assert f"rollout: 2/2 runner(s) on {v1}" in undo[2]


def test_rollback_errors_say_what_there_is_to_go_back_to(tmp_path: Path, nats_server: NatsServer) -> None:
    """No runners needed: every refusal comes before anything is written."""
    def cli(*args: str) -> tuple[int, str, str]:
        res = wallaroo(*args, "--nats", nats_server.url, cwd=tmp_path,
                       creds=nats_server.auth.seed("deployer"))
        return res.returncode, res.stdout, res.stderr

    code, out1, err = cli("deploy", str(V1), "--no-wait")
    assert code == 0, err
    v1 = version_of(out1)
    single = cli("rollback", "counter")
    code, out2, err = cli("deploy", str(V2), "--no-wait")
    assert code == 0, err
    v2 = version_of(out2)
    unknown = cli("rollback", "counter", "--to", "0000zz")
    current = cli("rollback", "counter", "--to", v2[:6])
    no_app = cli("rollback", "nosuchapp")
    empty = cli("rollback", "counter", "--to", "")
    manifest_now = asyncio.run(current_version(nats_server.url))
    # Other partition counts: accepted (the runners move the state by key); while that
    # state is still moving, another change is refused (no runners here: it never ends).
    wide = cli("deploy", str(WIDE), "--no-wait")
    again = cli("deploy", str(V1), "--no-wait")

    assert single[0] == 1 and single[2] == (
        f"error: counter has only one version deployed ({v1}): there is nothing to roll back to; "
        "deploy the version you want with `wallaroo deploy APP.py`\n")
    assert unknown[0] == 1 and unknown[2] == (
        f"error: counter has no deployed version '0000zz' (or it is older than the manifest "
        f"history kept); its versions, newest first: {v2}, {v1}. Pass one of them (or a unique "
        "prefix) to --to\n")
    assert current[0] == 1 and f"counter is already at version {v2}" in current[2]
    assert no_app[0] == 1 and "no app named 'nosuchapp' is deployed (deployed: counter)" in no_app[2]
    assert empty[0] == 2 and "--to needs a version" in empty[2]
    assert wide[0] == 0, wide[2]
    assert again[0] == 1 and again[2].startswith(
        "error: cannot deploy: stage 1 (count) is still moving its state from 2 to 3 partitions; "
        "deploy again once that has finished"), again[2]
    assert "Traceback" not in "".join(r[2] for r in (single, unknown, current, no_app, again))
    assert manifest_now == v2  # no refusal wrote a manifest


class ClusterCli:
    """The `wallaroo` command against a DevCluster, as a role: (exit code, stdout, stderr)."""

    def __init__(self, cluster: DevCluster, cwd: Path) -> None:
        self.cluster, self.cwd = cluster, cwd

    def __call__(self, *args: str, role: str = "deployer") -> tuple[int, str, str]:
        res = wallaroo(*args, "--nats", self.cluster.url, cwd=self.cwd,
                       creds=self.cluster.creds(role))
        return res.returncode, res.stdout, res.stderr

    def send_and_wait(self, words: list[str], total: int) -> None:
        """Send words to the counter app; return once it has `total` outputs."""
        code, _, err = self("send", "counter", "words", *words, role="client")
        assert code == 0, err
        outputs_at_least(self.cluster.url, total)


def outputs_at_least(url: str, n: int, timeout: float = 60.0) -> list[str]:
    """The counter's outputs once there are `n` of them (polled: runners work at their pace)."""
    deadline = time.monotonic() + timeout
    while True:
        found = asyncio.run(read_outputs(url))
        if len(found) >= n:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} outputs after {timeout}s, not {n}: {found}")
        time.sleep(0.1)


async def read_outputs(url: str) -> list[str]:
    nats = await Nats.connect(url)
    try:
        return (await collect_outputs(nats, await apps.manifest_of(nats, "counter")))["counts"]
    finally:
        await nats.close()


async def current_version(url: str) -> str:
    nats = await Nats.connect(url)
    try:
        return (await apps.manifest_of(nats, "counter")).version
    finally:
        await nats.close()


def rows_of(table: str) -> list[list[str]]:
    """(version, deploys, partitions, current) of each row of `wallaroo versions`."""
    rows = []
    for line in table.splitlines()[2:]:  # below the header and its rule
        if line.strip():
            cells = line.split()
            rows.append([cells[0], cells[7], cells[8], "current" if cells[-1] == "yes" else ""])
    return rows
