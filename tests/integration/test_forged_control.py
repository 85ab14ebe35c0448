"""A client cannot forge the runners' control messages (real nats-server with auth, a real
runner). Clients may publish anything to an app's source subjects, ids included; a runner's
end-of-input (`eoi:`), micro-batch timer (`tick:`) and producer ids (`s<stage>.<part>:...`)
are obeyed only on the control subjects, which only runners may write. On a source subject
such a message is read as a record batch like any other: an empty forged end of input is
dead-lettered whole (malformed, saying why), a forged id on good records is just an id."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats  # noqa: TID251 - a client that is not wallaroo: what a hostile publisher uses
import pytest
from typer.testing import CliRunner

from conftest import collect_outputs
from wallaroo.cli import app as cli
from wallaroo.control import apps, dlq, ingest, jobs
from wallaroo.core import codec
from wallaroo.core.names import AppNames, eoi_msg_id, internal_msg_id, source_sender, tick_msg_id
from wallaroo.core.wire import MALFORMED, DeadLetter, Manifest
from wallaroo.local.dev import DevCluster
from wallaroo.local.natsserver import NatsServer
from wallaroo.nats import Nats, Out
from wallaroo.pipeline import slug
from wallaroo_runtime.connectors.framing import file_source_id, source_msg_id

T = TypeVar("T")
APPS = Path(__file__).parent / "apps"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def forge(url: str, creds: Path, subject: str, payload: bytes, msg_id: str) -> None:
    """A JetStream publish with the client role's key and a message id of our choosing."""
    nc = await nats.connect(url, nkeys_seed=str(creds))
    try:
        await nc.jetstream().publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
    finally:
        await nc.close()


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 90) -> T:
    deadline = time.monotonic() + timeout
    while (found := await check()) is None:
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.1)
    return found


async def letters(nc: Nats, manifest: Manifest, count: int) -> list[DeadLetter] | None:
    found = await dlq.dead_letters(nc, manifest)
    return found if len(found) >= count else None


def words_file(path: Path, lines: int) -> collections.Counter[str]:
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon"]
    text = [" ".join(vocab[(i + j * 2) % len(vocab)] for j in range(1 + i % 4)) for i in range(lines)]
    path.write_text("\n".join(text) + "\n")
    return collections.Counter(w for t in text for w in t.split())


def test_a_forged_end_of_input_neither_ends_a_job_early_nor_loses_a_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = words_file(tmp_path / "words.txt", 20_000)  # many fetches: an end obeyed early bites
    monkeypatch.setenv("FORGED_INPUT", str(tmp_path / "words.txt"))
    with DevCluster(tmp_path / "c", runners=1) as cluster:
        totals, dead = asyncio.run(_forged_job(cluster, tmp_path / "words.txt"))
        listing = CliRunner().invoke(cli, ["dlq", "list", "forged_job"], env={"WALLAROO_NATS": cluster.url})
    # Every record exactly once, at the end; the client's own batches (sent with the plain ids
    # of the file's first batches) are records like any other.
    assert totals == {**expected, "omega": len(FIRST_BATCHES)}
    # The forgeries, each dead-lettered whole: bytes that are no record batch, and why.
    assert sorted(d.payload for d in dead) == [b""] * 5 + [b"9e+18"]
    assert {d.reason for d in dead} == {MALFORMED}
    assert all("control message id" in d.error and ".ctl.0." in d.error for d in dead)
    assert listing.exit_code == 0 and listing.output.count(MALFORMED) == 6, listing.output


FIRST_BATCHES = (0, 1, 2)


def plain_batch_ids(path: Path, batches: tuple[int, ...]) -> list[str]:
    """The untagged ids of a file source's batches (SEND_BATCH lines each): a file offset
    anybody who knows the file can work out."""
    offsets, at = [], 0
    for line in path.read_bytes().splitlines(keepends=True):
        offsets.append(at)
        at += len(line)
    source = file_source_id("lines", str(path), 0)
    return [source_msg_id(source, offsets[b * codec.SEND_BATCH]) for b in batches]


async def _forged_job(cluster: DevCluster, path: Path) -> tuple[dict[str, int], list[DeadLetter]]:
    deployer = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
    try:
        names = AppNames(slug("forged_job"))
        # Streams first, forgeries next, the job last: the forged ends come before any record,
        # as a runner's end of input would after the last one.
        await apps.ensure_streams(deployer, names.slug)
        await forge(cluster.url, cluster.creds("client"), names.source(0, 0), b"",
                    eoi_msg_id(source_sender("lines"), 0, 0))
        await forge(cluster.url, cluster.creds("client"), names.source(0, 0), b"9e+18",
                    tick_msg_id(AppNames.producer(0, 0), 9e18))
        # The ids of the source partition's first outputs to the keyed stage: JetStream drops a
        # message whose id the stream holds, whatever its subject (runners tag theirs).
        for commit, k in ((1, 0), (1, 1), (2, 0), (2, 1)):
            await forge(cluster.url, cluster.creds("client"), names.source(0, 0), b"",
                        internal_msg_id(AppNames.producer(0, 0), commit, k))
        # The ids the file source would give its first batches without the runners' tag: taken
        # first, JetStream would drop the real batches (records lost, silently).
        for msg_id in plain_batch_ids(path, FIRST_BATCHES):
            await forge(cluster.url, cluster.creds("client"), names.source(0, 0),
                        codec.pack_batch([b"omega"]), msg_id)
        manifest = await apps.deploy(deployer, APPS / "forged_job.py")
        assert manifest.stages[0].partitions == 1  # a file source's stage: all forged for it

        async def finished() -> bool | None:
            return True if (await jobs.job_state(deployer, manifest)).finished else None

        await eventually(finished, "the job finished")
        out = (await collect_outputs(deployer, manifest))["totals"]
        totals = {w: int(n) for w, n in (line.split() for line in out)}
        assert len(out) == len(totals), f"one total per word, got {out}"
        # A finished job committed every input message: its dead letters are all stored.
        return totals, await dlq.dead_letters(deployer, manifest)
    finally:
        await deployer.close()


def test_forged_timer_and_producer_ids_on_a_source_subject_change_no_batch(tmp_path: Path) -> None:
    with DevCluster(tmp_path / "c", runners=1) as cluster:
        trios, dead = asyncio.run(_forged_batches(cluster))
    # Without the forged timer, the first batch waits for its third word; the forged producer
    # ids do not make the second copy of "s7.0" look like one seen already.
    assert trios == ["a,b,c", "d,e,f"]
    [letter] = dead
    assert (letter.reason, letter.payload) == (MALFORMED, b"9e+18")
    assert "tick:" in letter.error and "control message id" in letter.error


async def _forged_batches(cluster: DevCluster) -> tuple[list[str], list[DeadLetter]]:
    deployer = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
    client = await Nats.connect(cluster.url, creds=cluster.creds("client"))
    try:
        manifest = await apps.deploy(deployer, APPS / "source_batches.py")
        names, creds = AppNames(manifest.slug), cluster.creds("client")
        await ingest.send(client, manifest, "words", [b"a", b"b"], "forged-1")
        # A timer "due" in the far future: obeyed, it would fire the batch of two at once.
        await forge(cluster.url, creds, names.source(0, 0), b"9e+18",
                    tick_msg_id(AppNames.producer(0, 0), 9e18))
        await eventually(lambda: letters(deployer, manifest, 1), "the forged timer dead-lettered")
        assert (await collect_outputs(deployer, manifest))["trios"] == []
        await ingest.send(client, manifest, "words", [b"c"], "forged-2")
        # Producer ids on good records: the second's lower "commit" must not hide it.
        await forge(cluster.url, creds, names.source(0, 0), codec.pack_batch([b"d"]), "s7.0:9:0")
        await forge(cluster.url, creds, names.source(0, 0), codec.pack_batch([b"e"]), "s7.0:3:0")
        await ingest.send(client, manifest, "words", [b"f"], "forged-3")

        async def two_trios() -> list[str] | None:
            out = (await collect_outputs(deployer, manifest))["trios"]
            return out if len(out) >= 2 else None

        await eventually(two_trios, "two batches of three")
        await apps.wait_idle(deployer, manifest, timeout=60)
        trios = (await collect_outputs(deployer, manifest))["trios"]
        return trios, await dlq.dead_letters(deployer, manifest)
    finally:
        await client.close()
        await deployer.close()


def test_a_data_stream_made_before_control_subjects_gains_them_on_deploy(nats_server: NatsServer) -> None:
    async def body() -> None:
        nc = await Nats.connect(nats_server.url)
        try:
            names = AppNames("older")
            await nc.ensure_stream(names.data_stream, [f"wl.{names.slug}.in.>", f"wl.{names.slug}.d.>"],
                                   work_queue=True)  # as an earlier version made it
            await nc.publish_all([Out(names.source(0, 0), codec.pack_batch([b"kept"]), "i:1")])
            await apps.ensure_streams(nc, names.slug)  # what deploy and every runner's start do
            await nc.publish_all([Out(names.control(0, 0), b"", "eoi:x>0.0#t")])
            consumer = await nc.fresh_consumer(names.data_stream, "check", [names.source(0, 0),
                                                                              names.control(0, 0)])
            got = await consumer.fetch(10, 1.0)
            assert [(m.subject, m.msg_id) for m in got] == [(names.source(0, 0), "i:1"),
                                                            (names.control(0, 0), "eoi:x>0.0#t")]
        finally:
            await nc.close()

    asyncio.run(body())
