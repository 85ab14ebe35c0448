"""`wallaroo dev` as a loop people trust: state kept across restarts (unless --fresh), crashed
runners restarted with nothing lost or duplicated, a dead nats-server ending dev in one line,
progress while an --input file is sent and processed. Real `wallaroo dev` subprocesses."""

from __future__ import annotations

import collections
import contextlib
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import WORD_COUNT, no_process_mentions, status, user_env, wait_until, wallaroo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
APP = WORD_COUNT / "word_count.py"


def dev(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return wallaroo("dev", *args, cwd=cwd)


def secrets(folder: Path) -> dict[str, bytes]:
    """Every key and credential file dev made under its state dir."""
    made = [*(folder / "keys").iterdir(), *(folder / "creds").iterdir()]
    return {p.name: p.read_bytes() for p in made}


def test_dev_keeps_state_outputs_and_keys_across_restarts_unless_fresh(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("a b\na\n")
    (tmp_path / "two.txt").write_text("a b\n")
    first = dev(str(APP), "--input", "one.txt", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.splitlines()) == ["a => 1", "a => 2", "b => 1"]
    made = secrets(tmp_path / ".wallaroo" / "dev")

    # Restarted: the counters go on, and only this session's outputs are printed.
    second = dev(str(APP), "--input", "two.txt", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert sorted(second.stdout.splitlines()) == ["a => 3", "b => 2"]
    assert "onto the state kept from the last dev here" in second.stderr
    assert secrets(tmp_path / ".wallaroo" / "dev") == made  # reused, not made anew
    # Not a terminal: progress as plain lines, the last one with everything processed.
    assert "wallaroo: sent 1 of 1 records; 1 processed, " in second.stderr
    assert "; 2 outputs\n" in second.stderr
    assert "\r" not in second.stderr

    # A dev without input serves what the earlier ones left: `tail` shows every output.
    served = subprocess.Popen([sys.executable, "-m", "wallaroo", "dev", str(APP)], cwd=tmp_path,
                              env=user_env(), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "word_count" in status(tmp_path).stdout, timeout=60)
        assert wallaroo("send", "word_count", "lines", "b", cwd=tmp_path).returncode == 0
        tail = wallaroo("tail", "word_count", "counts", "--count", "6", cwd=tmp_path)
        assert sorted(tail.stdout.splitlines()) == ["a => 1", "a => 2", "a => 3", "b => 1",
                                                    "b => 2", "b => 3"]
    finally:
        served.send_signal(signal.SIGTERM)
        out, err = served.communicate(timeout=60)
    assert served.returncode == 0 and "Traceback" not in err, err
    assert out.splitlines() == ["b => 3"]

    # Stopped by SIGTERM, started again: on from there too.
    third = dev(str(APP), "--input", "two.txt", cwd=tmp_path)
    assert sorted(third.stdout.splitlines()) == ["a => 4", "b => 4"], third.stderr

    fresh = dev(str(APP), "--input", "two.txt", "--fresh", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert sorted(fresh.stdout.splitlines()) == ["a => 1", "b => 1"]


def test_dev_fresh_with_a_broken_app_keeps_the_state_it_would_have_emptied(tmp_path: Path) -> None:
    """`--fresh` empties the state only for an app that loads: a typo costs nothing."""
    (tmp_path / "one.txt").write_text("a b\n")
    (tmp_path / "broken.py").write_text("import wallaroo\n\ndef application_setup(args:\n")
    assert dev(str(APP), "--input", "one.txt", cwd=tmp_path).returncode == 0
    made = secrets(tmp_path / ".wallaroo" / "dev")

    broken = dev("broken.py", "--input", "one.txt", "--fresh", cwd=tmp_path)
    assert broken.returncode != 0
    assert "broken.py" in broken.stderr and "Traceback" not in broken.stderr, broken.stderr
    assert secrets(tmp_path / ".wallaroo" / "dev") == made

    again = dev(str(APP), "--input", "one.txt", cwd=tmp_path)
    assert sorted(again.stdout.splitlines()) == ["a => 2", "b => 2"], again.stderr


def test_dev_killed_with_sigkill_starts_again_where_it_was(tmp_path: Path) -> None:
    killed = Dev(tmp_path)
    wait_until(lambda: "word_count" in status(tmp_path).stdout, timeout=60)
    assert wallaroo("send", "word_count", "lines", "a a", cwd=tmp_path).returncode == 0
    wait_until(lambda: "a => 2" in killed.out)
    children = killed.children("")
    assert len(children) == 2  # nats-server and r0
    killed.proc.kill()
    killed.proc.wait(timeout=30)
    # Its children died with it (PR_SET_PDEATHSIG; a zombie has no command line either); the
    # store they left is for the next dev.
    wait_until(lambda: all(_cmdline(p) == "" for p in children))
    (tmp_path / "in.txt").write_text("a\n")
    again = dev(str(APP), "--input", "in.txt", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["a => 3"]


def test_dev_restart_with_a_changed_app(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("a b\n")
    assert dev(str(APP), "--input", "in.txt", cwd=tmp_path).returncode == 0
    source = APP.read_text()
    # A new version of the same shape: a redeploy onto the kept state, as `wallaroo deploy`.
    reworded = tmp_path / "word_count.py"
    reworded.write_text(source.replace('" => "', '" == "'))
    again = dev(str(reworded), "--input", "in.txt", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(again.stdout.splitlines()) == ["a == 2", "b == 2"]
    # Other partitions: the state moves by key (wallaroo.core.repartition), counts go on.
    repartitioned = tmp_path / "word_count.py"
    repartitioned.write_text(source.replace('build_application("word_count", pipeline)',
                                            'build_application("word_count", pipeline, '
                                            'partitions=3)'))
    moved = dev(str(repartitioned), "--input", "in.txt", cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    assert sorted(moved.stdout.splitlines()) == ["a => 3", "b => 3"]
    # Other stages: keys would land elsewhere than their state; refused, naming the fix.
    restaged = tmp_path / "word_count.py"
    restaged.write_text(source.replace('name="count word"', 'name="count words"'))
    refused = dev(str(restaged), "--input", "in.txt", cwd=tmp_path)
    assert refused.returncode == 1
    assert "stages changed since the state kept in .wallaroo/dev" in refused.stderr
    assert "wallaroo dev --fresh" in refused.stderr and "Traceback" not in refused.stderr


def test_dev_loads_the_app_file_once(tmp_path: Path) -> None:
    """The load that checks the app and its input is the one deployed: its module's code
    (a user's, with whatever it does at import) runs once, not again for the deploy."""
    app = tmp_path / "word_count.py"
    app.write_text("import os\nwith open(os.environ['LOADS'], 'a') as f:\n    f.write('load\\n')\n"
                   + APP.read_text())
    (tmp_path / "in.txt").write_text("a b\n")
    loads = tmp_path / "loads.txt"
    res = wallaroo("dev", str(app), "--input", "in.txt", cwd=tmp_path,
                   env={**user_env(), "LOADS": str(loads)})
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["a => 1", "b => 1"]
    assert loads.read_text() == "load\n"


class Dev:
    """A `wallaroo dev` without input, its stderr in a file (read while it runs)."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.out_file, self.err_file = cwd / "dev.out", cwd / "dev.err"
        with open(self.out_file, "w") as out, open(self.err_file, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wallaroo", "dev", str(APP), *args], cwd=cwd,
                env=user_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    @property
    def out(self) -> str:
        return self.out_file.read_text()

    @property
    def err(self) -> str:
        return self.err_file.read_text()

    def children(self, mentioning: str) -> list[int]:
        """Pids of dev's child processes whose command line mentions `mentioning`."""
        pids = [int(p) for task in Path(f"/proc/{self.proc.pid}/task").iterdir()
                for p in (task / "children").read_text().split()]
        return [p for p in pids if mentioning in _cmdline(p)]

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=90)
        return self.out, self.err


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except FileNotFoundError:  # exited meanwhile
        return ""


@pytest.fixture
def running_dev(tmp_path: Path) -> Iterator[Dev]:
    d = Dev(tmp_path)
    try:
        wait_until(lambda: "word_count" in status(tmp_path).stdout, timeout=60)
        yield d
    finally:
        d.stop()


def test_dev_restarts_a_crashed_runner_and_loses_nothing(running_dev: Dev, tmp_path: Path
                                                         ) -> None:
    words = (WORD_COUNT / "count_this.txt").read_text() * 40
    (tmp_path / "words.txt").write_text(words)
    (tmp_path / "more.txt").write_text("more words\nmore\n")
    expected = collections.Counter(_words(words) + _words("more words\nmore\n"))
    total = sum(expected.values())
    # Paused, the runner gets the file's first batches (its pulls are answered) but commits
    # none: killed, it leaves the file in flight, which its successor must take over.
    [runner] = running_dev.children("--id r0")
    os.kill(runner, signal.SIGSTOP)
    sent = wallaroo("send", "word_count", "lines", "--file", "words.txt", cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    os.kill(runner, signal.SIGKILL)
    assert len(running_dev.out.splitlines()) == 0  # the guard: nothing was processed yet
    wait_until(lambda: "runner r0 crashed (killed by SIGKILL); restarted it, its log: "
                       ".wallaroo/dev/logs/r0.log" in running_dev.err)
    more = wallaroo("send", "word_count", "lines", "--file", "more.txt", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    tail = wallaroo("tail", "word_count", "counts", "--count", str(total), cwd=tmp_path)
    out, err = running_dev.stop()
    assert running_dev.proc.returncode == 0, err
    # The whole output, as printed by dev and as kept in the stream: every word counted
    # 1, 2, ..., n exactly once (nothing lost, nothing twice), n its count in the input.
    for printed in (tail.stdout, out):
        seen: dict[str, list[int]] = collections.defaultdict(list)
        for line in printed.splitlines():
            word, n = line.rsplit(" => ", 1)
            seen[word].append(int(n))
        assert {w: sorted(ns) for w, ns in seen.items()} == {
            w: list(range(1, n + 1)) for w, n in expected.items()}
    assert err.count("restarted it") == 1 and "Traceback" not in err


def _words(text: str) -> list[str]:
    """The words word_count.py counts in `text` (its own splitting, loaded from the app)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("word_count_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [w for line in text.splitlines() if line for w in module.split(line)]


def test_dev_ends_in_one_line_when_nats_server_dies(running_dev: Dev) -> None:
    [server] = running_dev.children("nats-server")
    port = _cmdline(running_dev.children("--id r0")[0]).split("nats://127.0.0.1:")[1].split()[0]
    os.kill(server, signal.SIGKILL)
    running_dev.proc.wait(timeout=60)
    _, err = running_dev.stop()
    assert running_dev.proc.returncode == 1, err
    assert "error: nats-server exited (killed by SIGKILL); see .wallaroo/dev/nats/nats-server.log" \
        in err
    assert "Traceback" not in err and "ConnectionRefused" not in err, err
    assert no_process_mentions(f"127.0.0.1:{port}"), "a runner outlived dev"


def test_dev_ends_when_a_runner_keeps_crashing(running_dev: Dev) -> None:
    # Killed again each time it is back: after a few quick crashes dev gives up, naming its log.
    deadline = time.monotonic() + 120
    while running_dev.proc.poll() is None:
        assert time.monotonic() < deadline, running_dev.err
        for pid in running_dev.children("--id r0"):
            with contextlib.suppress(ProcessLookupError):  # it died of the last kill
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)  # a new runner appears within the supervisor's backoff
    _, err = running_dev.stop()
    assert running_dev.proc.returncode == 1, err
    assert "error: runner r0 crashed 5 times in a row" in err
    assert "see .wallaroo/dev/logs/r0.log" in err and "Traceback" not in err


def test_dev_input_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    # stderr a terminal, stdout (the outputs) a pipe: the bar goes to the terminal only.
    controller, terminal = pty.openpty()
    env = {**user_env(), "TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "wallaroo", "dev", str(APP), "--input",
                             str(WORD_COUNT / "count_this.txt")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL)
    os.close(terminal)
    shown = bytearray()
    reader = threading.Thread(target=_drain, args=(controller, shown))  # a full pty would block
    reader.start()
    out, _ = proc.communicate(timeout=150)
    reader.join(timeout=30)
    os.close(controller)
    screen = shown.decode(errors="replace")
    assert proc.returncode == 0, screen
    assert len(out.decode().splitlines()) == 482  # outputs only: no bar in them
    assert "20/20" in screen and "20 records" in screen, screen  # M/N: all 20 lines sent
    assert "sent 20 of 20 records;" not in screen  # no plain lines where the bar is


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the terminal
            return
        if not chunk:
            return
        into.extend(chunk)


def test_dev_input_that_outlasts_its_timeout_ends_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("a b\n")
    res = dev(str(APP), "--input", "in.txt", "--timeout", "0.001", cwd=tmp_path)
    assert res.returncode == 1
    assert "error: word_count still has unprocessed input after 0s; raise --timeout" in res.stderr
    assert "Traceback" not in res.stderr
