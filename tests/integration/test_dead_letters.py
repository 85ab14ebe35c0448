"""Bad input and failing user code on a real runner: retried, then dead-lettered with step,
error and traceback, while the partition keeps flowing; `wallaroo dlq list` shows them."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wallaroo.cli import app as cli
from wallaroo.control import apps, dlq
from wallaroo.core import codec
from wallaroo.core.names import REPLAY_PREFIX, AppNames
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats, Out

APP = Path(__file__).parent / "apps" / "flaky.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("FLAKY_CALLS", str(path))
    return path


def test_poison_records_go_to_the_dead_letter_stream(run_on_runner, calls: Path) -> None:
    records = [b"1", b"2", b"bad", b"13", b"3", b"4"]
    outputs = run_on_runner(APP, [("numbers", r) for r in records])

    assert sorted(outputs["sums"]) == ["even 2 2", "even 4 6", "odd 1 1", "odd 3 4"]
    tried = calls.read_text().split()
    assert tried.count("13") == 3  # the default retry policy: 3 attempts, then dead letter


def test_dlq_list_shows_step_reason_and_error(tmp_path: Path, calls: Path) -> None:
    with DevCluster(tmp_path / "c") as cluster:
        runner = CliRunner()
        env = {"WALLAROO_NATS": cluster.url}
        assert runner.invoke(cli, ["deploy", str(APP)], env=env).exit_code == 0
        sent = runner.invoke(cli, ["send", "flaky", "numbers", "5", "oops\x1b[2J", "13"], env=env)
        assert sent.exit_code == 0, sent.output
        out = runner.invoke(cli, ["tail", "flaky", "sums", "--count", "1", "--timeout", "30"], env=env)
        assert out.output.strip() == "odd 5 5"
        listing = _wait_for_letters(runner, env, 2)

    header, _, *lines = listing.splitlines()
    rows = {cells[1]: cells for cells in (_cells(header, row) for row in lines[:2])}
    assert rows["decoder"][2:6] == ["decode_error", "3", "", "oops\\x1b[2J"]  # escaped
    # After the key_by the record travels pickled: shown as the value, not as pickle bytes.
    assert rows["running sum"][2:7] == ["user_error", "3", "odd", "13", "ValueError: 13 is unlucky"]
    assert "\x1b" not in listing
    # --tracebacks prints them in full, naming the app's file and the line that raised.
    line = APP.read_text().splitlines().index("            raise ValueError(msg)") + 1
    assert f'File "{APP}", line {line}, in running_sum' in listing
    assert "<dynamic-code>" not in listing


def _cells(header: str, row: str) -> list[str]:
    """A table row's cells, cut where the header's column names start."""
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    return [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]


def _wait_for_letters(runner: CliRunner, env: dict[str, str], n: int) -> str:
    import time

    deadline = time.monotonic() + 30
    while True:
        res = runner.invoke(cli, ["dlq", "list", "flaky", "--tracebacks"], env=env)
        assert res.exit_code == 0, res.output
        if res.output.count("--- dead letter") >= n or time.monotonic() > deadline:
            return res.output
        time.sleep(0.1)


def test_replay_after_deploying_a_fix_processes_the_dead_letter_once(
    tmp_path: Path, calls: Path
) -> None:
    fixed = APP.parent / "flaky_fixed.py"
    with DevCluster(tmp_path / "c") as cluster:
        runner = CliRunner()
        env = {"WALLAROO_NATS": cluster.url}
        assert runner.invoke(cli, ["deploy", str(APP)], env=env).exit_code == 0
        assert runner.invoke(cli, ["send", "flaky", "numbers", "1", "13", "3"], env=env).exit_code == 0
        _wait_for_letters(runner, env, 1)
        assert runner.invoke(cli, ["deploy", str(fixed)], env=env).exit_code == 0
        unknown = runner.invoke(cli, ["dlq", "replay", "flaky", "--seq", "99"], env=env)
        assert unknown.exit_code == 1 and "no dead letter with seq 99" in unknown.output
        # A client publishes first with the replay's plain id (the letter's seq is no secret):
        # JetStream would drop the replay as a duplicate, and the letter is deleted after it.
        asyncio.run(_claim_replay_id(cluster))
        replayed = runner.invoke(cli, ["dlq", "replay", "flaky"], env=env)
        assert "replayed 1 dead letter(s)" in replayed.output, replayed.output
        out = runner.invoke(cli, ["tail", "flaky", "sums", "--count", "4", "--timeout", "30"], env=env)
        listing = runner.invoke(cli, ["dlq", "list", "flaky"], env=env).output

    odd = [line for line in out.output.splitlines() if line.startswith("odd")]
    assert odd == ["odd 1 1", "odd 3 4", "odd 13 17"]  # the replay was not dropped
    assert "even 2 2" in out.output  # the client's record, a record like any other
    assert "no dead letters" in listing


async def _claim_replay_id(cluster: DevCluster) -> None:
    deployer = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
    client = await Nats.connect(cluster.url, creds=cluster.creds("client"))
    try:
        manifest = await apps.manifest_of(deployer, "flaky")
        [letter] = await dlq.dead_letters(deployer, manifest)
        names = AppNames(manifest.slug)
        await client.publish_all([Out(names.source(0, 0), codec.pack_batch([b"2"]),
                                      f"{REPLAY_PREFIX}{manifest.slug}:{letter.seq}")])
    finally:
        await client.close()
        await deployer.close()


def test_unserializable_and_oversized_outputs_are_dead_lettered(run_on_runner, tmp_path: Path) -> None:
    app = APP.parent / "unwieldy.py"
    outputs = run_on_runner(app, [("in", r) for r in [b"a", b"lock", b"big", b"b"]])

    assert sorted(outputs["out"]) == ["a", "b"]
