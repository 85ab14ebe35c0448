"""TLS on a local cluster (`wallaroo dev --tls`, `DevCluster(tls=True)`), on a real nats-server:
the app runs end to end over TLS, every command in the dev folder verifies the server with the
dev CA without flags, and a client that cannot verify it (another CA, none, or plain text) is
refused with a one-line error that says what to do."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import drive
from wallaroo.core.errors import TlsError
from wallaroo.local.auth import dev_auth
from wallaroo.local.dev import DevCluster
from wallaroo.local.natsserver import NatsServer
from wallaroo.local.tls import ensure_tls
from wallaroo.nats import Nats
from wallaroo.nats.protocol import TLS_CA_ENV

WORD_COUNT = Path(__file__).resolve().parents[2] / "examples" / "word_count"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
# As a user runs it (see test_cli.py): nothing about the cluster in the environment
USER_ENV = {k: v for k, v in os.environ.items()
            if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR", TLS_CA_ENV)}


def wallaroo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wallaroo", *args], cwd=cwd, env=USER_ENV,
                          text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)


def status(cwd: Path) -> subprocess.CompletedProcess[str]:
    return wallaroo("status", cwd=cwd)


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats", auth=dev_auth(tmp_path),
                    tls=ensure_tls(tmp_path / "tls")) as server:
        yield server


def test_word_count_runs_end_to_end_on_a_tls_cluster(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with DevCluster(tmp_path / "c", runners=2, tls=True) as cluster:
        assert cluster.url.startswith("tls://") and cluster.tls_ca is not None
        monkeypatch.setenv(TLS_CA_ENV, str(cluster.tls_ca))
        outputs = asyncio.run(drive(cluster.url, WORD_COUNT / "word_count.py",
                                    [("lines", b"hello hello world")]))
        cluster.check_runners()  # the runners verified the server and still run
    assert sorted(outputs["counts"]) == ["hello => 1", "hello => 2", "world => 1"]


def test_dev_tls_commands_in_its_folder_verify_with_the_dev_ca(tmp_path: Path) -> None:
    dev = subprocess.Popen([sys.executable, "-m", "wallaroo", "dev", "--tls",
                            str(WORD_COUNT / "word_count.py")], cwd=tmp_path, env=USER_ENV,
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    try:
        url_file = tmp_path / ".wallaroo" / "dev" / "url"
        wait_until(lambda: url_file.exists() and "word_count" in status(tmp_path).stdout)
        assert url_file.read_text().startswith("tls://127.0.0.1:")
        sent = wallaroo("send", "word_count", "lines", "hello hello world", cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        tail = wallaroo("tail", "word_count", "counts", "--count", "3", cwd=tmp_path)
        assert sorted(tail.stdout.splitlines()) == ["hello => 1", "hello => 2", "world => 1"]
        # elsewhere, without the dev CA: refused in one line naming the fix
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        creds = tmp_path / ".wallaroo" / "dev" / "creds" / "client.nk"
        res = wallaroo("--creds", str(creds), "status", "--nats", url_file.read_text(),
                       cwd=elsewhere)
        assert res.returncode == 1
        assert "certificate verify failed" in res.stderr and "--tls-ca" in res.stderr
        assert "Traceback" not in res.stderr
        ca = tmp_path / ".wallaroo" / "dev" / "tls" / "ca.pem"
        res = wallaroo("--creds", str(creds), "--tls-ca", str(ca), "status", "--nats",
                       url_file.read_text(), cwd=elsewhere)
        assert res.returncode == 0 and "word_count" in res.stdout, res.stderr
    finally:
        dev.send_signal(signal.SIGINT)
        out, err = dev.communicate(timeout=60)
    assert dev.returncode == 0, err
    assert sorted(out.splitlines()) == ["hello => 1", "hello => 2", "world => 1"]
    assert "Traceback" not in err


def test_a_client_with_another_ca_or_none_is_refused(tls_server: NatsServer,
                                                      tmp_path: Path) -> None:
    other = ensure_tls(tmp_path / "other").ca
    for ca in (other, None):
        with pytest.raises(TlsError, match="certificate verify failed") as refused:
            asyncio.run(Nats.connect(tls_server.url, persistent=False, tls_ca=ca))
        assert "--tls-ca" in str(refused.value) and "\n" not in str(refused.value)
    asyncio.run(connect_and_close(tls_server.url, tmp_path / "tls" / "ca.pem"))


async def connect_and_close(url: str, ca: Path) -> None:
    nats = await Nats.connect(url, persistent=False, tls_ca=ca)
    await nats.close()


def test_a_missing_ca_file_is_named(tls_server: NatsServer, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="does not exist"):
        asyncio.run(Nats.connect(tls_server.url, persistent=False, tls_ca=tmp_path / "nope.pem"))


def test_plain_nats_to_the_tls_port_fails(tls_server: NatsServer, tmp_path: Path) -> None:
    plain = tls_server.url.replace("tls://", "nats://")
    with pytest.raises(TlsError, match=r"tls:// URL"):
        asyncio.run(Nats.connect(plain, persistent=False, tls_ca=tmp_path / "tls" / "ca.pem"))


def test_wallaroo_run_tls_calls_functions_over_tls(tmp_path: Path) -> None:
    app = Path(__file__).parent / "apps" / "functions_app.py"
    res = subprocess.run([sys.executable, "-m", "wallaroo", "run", "--tls", str(app)],
                         env=USER_ENV, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "nats-server at tls://" in res.stderr
    assert res.stdout.splitlines()[:2] == ["16", str([x * x for x in range(10)])]
