"""Wallaroo data and apps port end to end: framed binary files (4-byte big-endian length, then
the payload) through `wallaroo dev --input` and `wallaroo send --file`, into a 0.6-style app
and a 0.5 ApplicationBuilder app, on real nats-server and runner processes."""

from __future__ import annotations

import asyncio
import random
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from test_cli import user_env, wallaroo

from conftest import collect_outputs
from wallaroo.control import apps
from wallaroo.local.dev import DevCluster
from wallaroo.nats import Nats

APPS = Path(__file__).parent / "apps"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_dev_input_sends_every_frame_of_a_float_file(tmp_path: Path) -> None:
    rng = random.Random(7)
    # Values whose packed bytes hold newlines, NULs and text: a line split would mangle them.
    values = [0.0, -1.5, 1e300, float.fromhex("0x1.0a0a0a0a0a0a0p+0"), 2.5e-310,
              *(rng.uniform(-1e6, 1e6) for _ in range(300))]
    data = tmp_path / "floats.bin"
    data.write_bytes(b"".join(frame(struct.pack(">d", v)) for v in values))

    res = wallaroo("dev", str(APPS / "framed_floats.py"), "--input", str(data), cwd=tmp_path)

    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [repr(v / 2) for v in values]  # all, once, in order
    assert f"sent {len(values)} records" in res.stderr


def test_dev_input_refuses_a_truncated_frame_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "floats.bin"
    data.write_bytes(frame(struct.pack(">d", 1.0)) + frame(struct.pack(">d", 2.0))[:9])

    res = wallaroo("dev", str(APPS / "framed_floats.py"), "--input", str(data), cwd=tmp_path)

    assert res.returncode == 1
    assert f"error: {data}: the frame at byte 12 is truncated: it needs 12 byte(s)" in res.stderr
    assert "only 9 remain" in res.stderr and "Traceback" not in res.stderr
    assert "nats-server at" not in res.stderr  # refused before a cluster started


def test_send_file_of_letter_count_frames_into_a_0_5_app_totals_per_letter(tmp_path: Path) -> None:
    rng = random.Random(5)
    votes = [(rng.choice("abcdefgh"), rng.randrange(0, 1000)) for _ in range(500)]
    data = tmp_path / "votes.bin"
    data.write_bytes(b"".join(frame(struct.pack(">sI", k.encode(), n)) for k, n in votes))
    expected: Counter[str] = Counter()
    for k, n in votes:
        expected[k] += n

    with DevCluster(tmp_path / "c", runners=2) as cluster:
        url = ["--nats", cluster.url]
        deployed = wallaroo("deploy", str(APPS / "alphabet_0_5.py"), *url, cwd=tmp_path,
                            creds=cluster.creds("deployer"))
        assert deployed.returncode == 0, deployed.stderr
        for _ in range(2):  # the same file again: every record dropped as a duplicate
            sent = wallaroo("send", "alphabet", "alphabet", "--file", str(data), *url,
                            cwd=tmp_path, creds=cluster.creds("client"))
            assert sent.returncode == 0, sent.stderr
        assert f"sent {len(votes)} record(s)" in sent.stderr and "0 new" in sent.stderr
        outputs = asyncio.run(outputs_of(cluster, "alphabet"))["totals"]

    assert len(outputs) == len(votes)  # one running total per record, none twice
    last: dict[str, int] = {}
    per_letter: dict[str, list[int]] = {}
    for line in outputs:
        letter, total = line.split()
        last[letter] = int(total)
        per_letter.setdefault(letter, []).append(int(total))
    assert last == dict(expected)
    assert all(totals == sorted(totals) for totals in per_letter.values())  # per-key order


async def outputs_of(cluster: DevCluster, app: str) -> dict[str, list[str]]:
    nats = await Nats.connect(cluster.url, creds=cluster.creds("deployer"))
    try:
        manifest = await apps.manifest_of(nats, app)
        await apps.wait_idle(nats, manifest, timeout=60)
        return await collect_outputs(nats, manifest)
    finally:
        await nats.close()


def run_framed_job(tmp_path: Path, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**user_env(), "FRAMED_INPUT": str(data), "FRAMED_OUTPUT": str(tmp_path / "out.txt")}
    return wallaroo("run", str(APPS / "framed_job.py"), cwd=tmp_path, env=env)


def test_run_reads_a_framed_file_through_a_bounded_file_source(tmp_path: Path) -> None:
    values = [float(n) / 7 for n in range(-500, 500)]
    data = tmp_path / "floats.bin"
    data.write_bytes(b"".join(frame(struct.pack(">d", v)) for v in values))

    res = run_framed_job(tmp_path, data)

    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.txt").read_text().splitlines() == [repr(v / 2) for v in values]


def test_run_refuses_a_truncated_framed_file_before_starting(tmp_path: Path) -> None:
    data = tmp_path / "floats.bin"
    data.write_bytes(frame(struct.pack(">d", 1.0)) + b"\x00\x00")

    res = run_framed_job(tmp_path, data)

    assert res.returncode == 2, res.stderr  # run's exit code for a job that cannot run
    assert len(res.stderr.splitlines()) == 1
    assert f"error: {data}: the frame at byte 12 is truncated: it needs 4 byte(s)" in res.stderr
    assert "nats-server at" not in res.stderr  # refused before a cluster started
    assert not (tmp_path / "out.txt").exists()
