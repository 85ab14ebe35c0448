"""Hostile bytes on a real runner (issue 9, item 4): a message that does not decode is
dead-lettered whole and acked, the partition keeps flowing, `wallaroo dlq list` shows it (not
replayable), `wallaroo status` counts it; a worker that keeps failing shows in status problems."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import nats  # noqa: TID251 - a client that is not wallaroo: what a hostile publisher uses
import pytest
from typer.testing import CliRunner

from wallaroo.cli import app as cli
from wallaroo.core.names import AppNames
from wallaroo.local.dev import DevCluster

T = TypeVar("T")
APP = Path(__file__).parent / "apps" / "flaky.py"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAKY_CALLS", str(tmp_path / "calls.log"))


async def publish_raw(url: str, subject: str, payload: bytes, creds: Path) -> None:
    """A plain JetStream publish: no record batch, no message id."""
    nc = await nats.connect(url, nkeys_seed=str(creds))
    try:
        await nc.jetstream().publish(subject, payload)
    finally:
        await nc.close()


def test_garbage_on_a_source_subject_is_dead_lettered_and_good_records_come_out(tmp_path: Path) -> None:
    garbage = random.Random(4).randbytes(64)
    with DevCluster(tmp_path / "c") as cluster:
        runner, env = CliRunner(), {"WALLAROO_NATS": cluster.url}
        assert runner.invoke(cli, ["deploy", str(APP)], env=env).exit_code == 0
        # With the client role's credentials: any client may write this much.
        asyncio.run(publish_raw(cluster.url, AppNames("flaky").source(0, 0), garbage,
                                cluster.creds("client")))
        sent = runner.invoke(cli, ["send", "flaky", "numbers", "5", "7", "2"], env=env)
        assert sent.exit_code == 0, sent.output
        out = runner.invoke(cli, ["tail", "flaky", "sums", "--count", "3", "--timeout", "30"], env=env)
        listing = until(lambda: cli_out(runner, env, "dlq", "list", "flaky", "--tracebacks"),
                        lambda text: "malformed_message" in text)
        partitions = until(lambda: status_table(cli_out(runner, env, "status", "--partitions"),
                                                "committed seq"),
                           lambda rows: any(r["malformed"] == "1" for r in rows))
        replayed = cli_out(runner, env, "dlq", "replay", "flaky")
        after = cli_out(runner, env, "dlq", "list", "flaky")

    assert sorted(out.output.splitlines()) == ["even 2 2", "odd 5 5", "odd 7 12"]
    [row] = status_table(listing, "replay")
    assert (row["step"], row["reason"], row["replay"]) == ("decode", "malformed_message", "no")
    assert all(c.isprintable() or c == "\n" for c in listing)  # the bytes reach a terminal escaped
    assert f"from {AppNames('flaky').source(0, 0)} seq 1" in listing
    assert [r["malformed"] for r in partitions if (r["stage"], r["partition"]) == ("0", "0")] == ["1"]
    assert "replayed 0 dead letter(s)" in replayed and "malformed_message" in after


def test_a_worker_that_keeps_failing_shows_in_status_problems(tmp_path: Path) -> None:
    """A changelog record that does not parse stops its partition (its state cannot be
    trusted, so it must not be skipped): the worker fails at every restart, and says so."""
    with DevCluster(tmp_path / "c") as cluster:
        runner, env = CliRunner(), {"WALLAROO_NATS": cluster.url}
        assert runner.invoke(cli, ["deploy", str(APP)], env=env).exit_code == 0
        # Only a runner (or the deployer) may write a changelog: this is a runner's bug or a
        # corrupt store, not a hostile client (whose publish the server refuses).
        asyncio.run(publish_raw(cluster.url, AppNames("flaky").log(0, 0), b"not a commit record",
                                cluster.creds("deployer")))
        # A commit now fails the fence (the log moved on), and every restore after it fails.
        assert runner.invoke(cli, ["send", "flaky", "numbers", "1"], env=env).exit_code == 0
        problems = until(lambda: status_table(cli_out(runner, env, "status"), "error"),
                         lambda rows: any("partition 0" in r["error"] for r in rows))

    [row] = [r for r in problems if r["app"] == "flaky" and "stage 0 partition 0" in r["error"]]
    assert "worker failed" in row["error"] and "malformed commit record" in row["error"]


def cli_out(runner: CliRunner, env: dict[str, str], *args: str) -> str:
    res = runner.invoke(cli, list(args), env=env)
    assert res.exit_code == 0, res.output
    return res.output


def status_table(text: str, column: str) -> list[dict[str, str]]:
    """The rows of the first table in `text` whose header has `column`, as dicts (cells
    cut where the header's names start: a cell may be empty or hold spaces)."""
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if len(lines) > 1 and lines[1].startswith("─"):
            # Column names are words with single spaces between, columns 3 spaces apart.
            starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
            spans = list(zip(starts, [*starts[1:], 10**6], strict=True))

            def cells(line: str, spans: list[tuple[int, int]] = spans) -> list[str]:
                return [line[a:b].strip() for a, b in spans]

            header = cells(lines[0])
            if column in header:
                return [dict(zip(header, cells(line), strict=True)) for line in lines[2:]]
    return []


def until(get: Callable[[], T], done: Callable[[T], bool], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)
