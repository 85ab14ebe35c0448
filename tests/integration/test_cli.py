"""The `wallaroo` command as a user runs it: real subprocesses, real nats-server and runners."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wallaroo.local.dev import DevCluster
from wallaroo.local.natsserver import free_port

ROOT = Path(__file__).resolve().parents[2]
WORD_COUNT = ROOT / "examples" / "word_count"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


# As a user runs it: no cluster or credentials in the environment; `wallaroo dev` makes the
# role keys under .wallaroo/dev/creds/ and every command run in that folder finds its own.
def user_env() -> dict[str, str]:
    """Read when called: conftest's session fixtures (the deploy key) set the environment
    after this module is imported."""
    return {k: v for k, v in os.environ.items()
            if k not in ("WALLAROO_NATS", "WALLAROO_CREDS", "WALLAROO_AUTH_DIR")}


def wallaroo(*args: str, cwd: Path, env: dict[str, str] | None = None, creds: Path | None = None,
             **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would (user_env()), with `creds` when the cluster is not a
    `wallaroo dev` in `cwd`."""
    env = dict(user_env() if env is None else env)
    if creds is not None:
        env["WALLAROO_CREDS"] = str(creds)
    return subprocess.run([sys.executable, "-m", "wallaroo", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=150, **kw)


def no_process_mentions(text: str) -> bool:
    return subprocess.run(["pgrep", "-f", text], capture_output=True).returncode == 1


def test_dev_with_input_prints_every_count_then_exits_and_stops_everything(tmp_path: Path) -> None:
    # The url file of a dev that was killed (nothing listens there any more) is stale: replaced.
    (tmp_path / ".wallaroo" / "dev").mkdir(parents=True)
    (tmp_path / ".wallaroo" / "dev" / "url").write_text(f"nats://127.0.0.1:{free_port()}")
    # Out of the box: no deploy key anywhere, dev makes its own and signs with it.
    res = wallaroo("dev", str(WORD_COUNT / "word_count.py"), "--input",
                   str(WORD_COUNT / "count_this.txt"), "--runners", "2", cwd=tmp_path,
                   env=without("WALLAROO_DEPLOY_KEY"))

    assert res.returncode == 0, res.stderr
    keys = tmp_path / ".wallaroo" / "dev" / "keys"
    assert {p.name: p.stat().st_mode & 0o777 for p in keys.iterdir()} == {
        "deploy.key": 0o600, "deploy.pub": 0o644, "state.key": 0o600}
    dev_key = wallaroo("keys", "fingerprint", str(keys / "deploy.pub"), cwd=tmp_path).stdout.strip()
    # A runner that ran the app trusts dev's key. Which one: a tiny input may be done before
    # the slower of two starting runners has said anything (dev then stops it mid-start).
    logs = [(tmp_path / ".wallaroo" / "dev" / "logs" / f"{r}.log").read_text() for r in ("r0", "r1")]
    assert any(f"running deploys signed by {dev_key}\n" in log for log in logs)
    lines = res.stdout.splitlines()
    assert len(lines) == 482
    last = {}
    for line in lines:
        word, n = line.rsplit(" => ", 1)
        last[word] = int(n)
    assert last == json.loads((WORD_COUNT / "expected_final_counts.json").read_text())
    url = res.stderr.split("nats-server at ")[1].split(",")[0]
    assert no_process_mentions(url.removeprefix("nats://")), "a runner or nats-server outlived dev"
    assert not (tmp_path / ".wallaroo" / "dev" / "url").exists()


def test_dev_autoscale_runs_the_autoscaler_as_its_own_process(tmp_path: Path) -> None:
    # Without --input, dev runs until told to stop: a dev that ends stops an autoscaler still
    # starting before it says anything, and how soon dev ends is no business of this test.
    dev = subprocess.Popen([sys.executable, "-m", "wallaroo", "dev", str(WORD_COUNT / "word_count.py"),
                            "--autoscale", "--max-runners", "2"], cwd=tmp_path, env=user_env(),
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    log_file = tmp_path / ".wallaroo" / "dev" / "logs" / "autoscaler.log"
    try:
        wait_until(lambda: log_file.exists() and "autoscaler (pid " in log_file.read_text())
        sent = wallaroo("send", "word_count", "lines", "--file", str(WORD_COUNT / "count_this.txt"),
                        cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        tail = wallaroo("tail", "word_count", "counts", "--count", "482", "--timeout", "60",
                        cwd=tmp_path)
        assert len(tail.stdout.splitlines()) == 482
    finally:
        dev.send_signal(signal.SIGINT)
        _, err = dev.communicate(timeout=60)
    assert dev.returncode == 0, err
    log = log_file.read_text()
    pid = int(log.split("autoscaler (pid ")[1].split(")")[0])
    assert pid != os.getpid() and "with the local backend, 1..2 runners" in log
    url = err.split("nats-server at ")[1].split(",")[0]
    assert no_process_mentions(url.removeprefix("nats://")), "the autoscaler outlived dev"


def test_dev_without_input_serves_send_tail_status_until_ctrl_c(tmp_path: Path) -> None:
    app = str(WORD_COUNT / "word_count.py")
    dev = subprocess.Popen([sys.executable, "-m", "wallaroo", "dev", app], cwd=tmp_path,
                           env=user_env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        url_file = tmp_path / ".wallaroo" / "dev" / "url"
        wait_until(lambda: url_file.exists() and "word_count" in status(tmp_path).stdout)
        sent = wallaroo("send", "word_count", "lines", "hello hello world", cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        # A second dev here would wipe the running one's store: it is refused, naming why.
        second = wallaroo("dev", app, "--input", str(WORD_COUNT / "count_this.txt"), cwd=tmp_path)
        assert second.returncode == 1 and f"(pid {dev.pid}) is already using .wallaroo/dev" in second.stderr
        assert "Traceback" not in second.stderr
        tail = wallaroo("tail", "word_count", "counts", "--count", "3", cwd=tmp_path)
        assert sorted(tail.stdout.splitlines()) == ["hello => 1", "hello => 2", "world => 1"]
        assert tail.returncode == 0
        # The same file twice: the second send says that nothing in it was new.
        (tmp_path / "more.txt").write_text("a b\nc\n")
        first = wallaroo("send", "word_count", "lines", "--file", "more.txt", cwd=tmp_path)
        assert "sent 2 record(s) to word_count/lines\n" in first.stderr, first.stderr
        second = wallaroo("send", "word_count", "lines", "--file", "more.txt", cwd=tmp_path)
        assert "sent 2 record(s) to word_count/lines; 0 new, 2 sent before" in second.stderr
        table = status(tmp_path).stdout
        assert "word_count" in table and "count word" in table and "r0" in table
        # In dev's folder, deploy signs with dev's key without being told.
        again = wallaroo("deploy", app, cwd=tmp_path, env=without("WALLAROO_DEPLOY_KEY"))
        assert again.returncode == 0 and "unsigned" not in again.stderr, again.stderr
        # Not a terminal: progress comes as plain lines, never carriage returns.
        assert "rollout: 1/1 runner(s)" in again.stderr and "\r" not in again.stderr
        scaled = wallaroo("scale", "--runners", "2", cwd=tmp_path)
        assert scaled.returncode == 0, scaled.stderr
        wait_until(lambda: "r1" in status(tmp_path).stdout)
    finally:
        dev.send_signal(signal.SIGINT)
        out, err = dev.communicate(timeout=60)
    assert dev.returncode == 0, err
    assert sorted(out.splitlines()) == ["a => 1", "b => 1", "c => 1", "hello => 1", "hello => 2",
                                        "world => 1"]
    assert "Traceback" not in err


def status(cwd: Path) -> subprocess.CompletedProcess[str]:
    return wallaroo("status", cwd=cwd)


def wait_until(cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["dev", "missing.py"], 2, "does not exist"),
        (["send", "app", "src"], 2, "give either --file F or VALUE"),
        (["runner", "--member-ttl", "0.1"], 2, "Invalid value for '--member-ttl'"),
        (["frobnicate"], 2, "No such command"),
        (["scale", "word_count", "--runners", "2"], 2, "unexpected extra argument(s) (word_count)"),
    ],
)
def test_usage_errors_say_what_to_fix_without_a_traceback(
    tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    res = wallaroo(*args, cwd=tmp_path)
    assert res.returncode == code
    assert says in res.stderr
    assert "Traceback" not in res.stderr


def test_unreachable_nats_is_a_one_line_error(tmp_path: Path) -> None:
    res = wallaroo("status", "--nats", f"nats://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert res.returncode == 1
    assert "cannot reach NATS" in res.stderr and "Traceback" not in res.stderr


def test_a_folder_that_cannot_be_written_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    res = wallaroo("keys", "generate", "--dir", "a_file/keys", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["error: [Errno 20] Not a directory: 'a_file/keys'"]


def test_a_broken_app_file_names_the_file_and_line(tmp_path: Path) -> None:
    app = tmp_path / "broken.py"
    app.write_text("import wallaroo\n\n@wallaroo.computation\ndef f(x):\n    return x\n")
    res = wallaroo("dev", str(app), cwd=tmp_path)
    assert res.returncode == 1
    assert "Did you forget the parentheses" in res.stderr
    assert "broken.py:3" in res.stderr and "Traceback" not in res.stderr
    # dev launched nats-server while it loaded the app: stopped with it; no runner started
    assert no_process_mentions(str(tmp_path / ".wallaroo")), "nats-server outlived dev"
    assert not (tmp_path / ".wallaroo" / "dev" / "logs").exists(), "a runner was started"


def test_unknown_app_lists_the_deployed_ones(tmp_path: Path, nats_server) -> None:  # type: ignore[no-untyped-def]
    deployed = wallaroo("--creds", str(nats_server.auth.seed("deployer")), "deploy",
                        str(WORD_COUNT / "word_count.py"), "--nats", nats_server.url, cwd=tmp_path)
    assert deployed.returncode == 0, deployed.stderr
    res = wallaroo("--creds", str(nats_server.auth.seed("client")), "send", "nope", "lines", "x",
                   "--nats", nats_server.url, cwd=tmp_path)
    assert res.returncode == 1
    assert "no app named 'nope'" in res.stderr and "word_count" in res.stderr


def test_a_record_too_large_for_nats_is_named_not_a_traceback(tmp_path: Path, nats_server) -> None:  # type: ignore[no-untyped-def]
    deployed = wallaroo("--creds", str(nats_server.auth.seed("deployer")), "deploy",
                        str(WORD_COUNT / "word_count.py"), "--nats", nats_server.url, "--no-wait",
                        cwd=tmp_path)
    assert deployed.returncode == 0, deployed.stderr
    big = tmp_path / "big.txt"
    big.write_bytes(b"small line\n" + b"x" * (9 * 1024 * 1024) + b"\n")
    res = wallaroo("--creds", str(nats_server.auth.seed("client")), "send", "word_count", "lines",
                   "--file", str(big), "--nats", nats_server.url, cwd=tmp_path)
    assert res.returncode == 1
    assert "record 1 (counting from 0) is 9437184 bytes" in res.stderr
    assert "Traceback" not in res.stderr


def test_dev_serves_an_apps_functions_until_ctrl_c(tmp_path: Path) -> None:
    app = str(ROOT / "tests" / "integration" / "apps" / "functions_app.py")
    dev = subprocess.Popen([sys.executable, "-m", "wallaroo", "dev", app], cwd=tmp_path,
                           env=user_env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        url_file = tmp_path / ".wallaroo" / "dev" / "url"
        wait_until(lambda: url_file.exists() and "fntest" in status(tmp_path).stdout)
        called = wallaroo("call", "fntest", "square", "11", cwd=tmp_path)  # finds dev's cluster
        assert called.returncode == 0 and called.stdout.strip() == "121", called.stderr
    finally:
        dev.send_signal(signal.SIGINT)
        _, err = dev.communicate(timeout=60)
    assert dev.returncode == 0, err  # Ctrl-C is how a dev session without --input ends


def test_keys_generate_writes_a_pair_and_never_overwrites_it(tmp_path: Path) -> None:
    made = wallaroo("keys", "generate", "--dir", "k", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    private, public = tmp_path / "k" / "deploy.key", tmp_path / "k" / "deploy.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    fp = wallaroo("keys", "fingerprint", str(public), cwd=tmp_path).stdout.strip()
    assert fp.startswith("ed25519:") and f"public key {fp}" in made.stdout
    assert wallaroo("keys", "fingerprint", str(private), cwd=tmp_path).stdout.strip() == fp

    again = wallaroo("keys", "generate", "--dir", "k", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr
    state = wallaroo("keys", "state", "--dir", "k", cwd=tmp_path)
    assert state.returncode == 0 and (tmp_path / "k" / "state.key").stat().st_mode & 0o777 == 0o600


def test_a_runner_without_a_trusted_key_does_not_start(tmp_path: Path) -> None:
    env_less = wallaroo("runner", "--nats", f"nats://127.0.0.1:{free_port()}", cwd=tmp_path,
                        env=without("WALLAROO_TRUSTED_KEYS"))
    assert env_less.returncode == 1
    assert "no trusted deploy key: pass --trust PUBKEY_FILE" in env_less.stderr
    assert "Traceback" not in env_less.stderr
    assert wallaroo("keys", "generate", cwd=tmp_path).returncode == 0
    private = wallaroo("runner", "--trust", "deploy.key", cwd=tmp_path)
    assert private.returncode == 1
    assert "is a private key: a runner holding it could sign code" in private.stderr


def test_deploy_signed_with_another_key_exits_1_naming_each_runner_and_the_keys(tmp_path: Path) -> None:
    """Runners trust the cluster's key and conftest's deployer key; a deploy signed with a
    third key is refused by each of them, they keep running the version they ran, and
    status shows both that version (running) and the refused one (deployed)."""
    assert wallaroo("keys", "generate", "--dir", "foreign", cwd=tmp_path).returncode == 0
    variant = tmp_path / "variant" / "word_count.py"  # another file, so another version
    variant.parent.mkdir()
    variant.write_text((WORD_COUNT / "word_count.py").read_text())
    with DevCluster(tmp_path / "c", runners=2) as cluster:
        url = ["--nats", cluster.url]
        first = wallaroo("deploy", str(WORD_COUNT / "word_count.py"), *url, cwd=tmp_path,
                         creds=cluster.creds("deployer"))
        assert first.returncode == 0, first.stderr
        # Both runners run it (deploy does not wait for runners that have not joined yet).
        wait_until(lambda: f"{version_of(first.stdout)} (2)" in status_of(cluster, tmp_path))
        refused = wallaroo("deploy", str(variant), *url, "--key", "foreign/deploy.key", cwd=tmp_path,
                           creds=cluster.creds("deployer"))
        table = wallaroo("status", *url, cwd=tmp_path, creds=cluster.creds("deployer")).stdout

    assert refused.returncode == 1, refused.stderr
    old, new = (version_of(res.stdout) for res in (first, refused))
    fp = wallaroo("keys", "fingerprint", "foreign/deploy.pub", cwd=tmp_path).stdout.strip()
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, refused.stderr
    for runner, line in zip(["r0", "r1"], errors, strict=True):
        assert line.startswith(f"error: runner {runner} refused {new}: SignatureError: word_count "
                               f"version {new} is signed with key {fp}, but this runner trusts ed25519:")
    header, _, row = table.splitlines()[:3]
    assert header.split()[:3] == ["app", "deployed", "running"]
    assert row.split()[:4] == ["word_count", new, old, "(2)"]


def test_deploy_exits_1_when_the_rollout_times_out(tmp_path: Path) -> None:
    # A membership that outlives the stopped runner for the whole wait.
    with DevCluster(tmp_path / "c", runners=1, member_ttl=15.0) as cluster:
        url = ["--nats", cluster.url]
        first = wallaroo("deploy", str(WORD_COUNT / "word_count.py"), *url, cwd=tmp_path,
                         creds=cluster.creds("deployer"))
        assert first.returncode == 0, first.stderr
        wait_until(lambda: f"{version_of(first.stdout)} (1)" in status_of(cluster, tmp_path))
        runner = cluster.runners[0]
        runner.signal(signal.SIGSTOP)  # alive (its membership has not lapsed) but never switches
        try:
            res = wallaroo("deploy", str(ROOT / "tests" / "integration" / "apps" / "flaky.py"), *url,
                           "--wait-timeout", "1", cwd=tmp_path, creds=cluster.creds("deployer"))
        finally:
            runner.signal(signal.SIGCONT)

    assert res.returncode == 1
    assert f"error: rollout timed out: runner(s) r0 still not running {version_of(res.stdout)}" in res.stderr


def status_of(cluster: DevCluster, cwd: Path) -> str:
    return wallaroo("status", "--nats", cluster.url, cwd=cwd, creds=cluster.creds("client")).stdout


def version_of(deploy_stdout: str) -> str:
    return deploy_stdout.split(" version ")[1].split()[0]


def without(*names: str) -> dict[str, str]:
    return {k: v for k, v in user_env().items() if k not in names}


def test_dev_input_with_dead_letters_shows_them_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "numbers.txt").write_text("1\n2\nbad\x1b[2J\n13\n4\n")
    env = {**user_env(), "FLAKY_CALLS": str(tmp_path / "calls.log")}
    res = wallaroo("dev", str(Path(__file__).parent / "apps" / "flaky.py"), "--input",
                   str(tmp_path / "numbers.txt"),
                   cwd=tmp_path, env=env)
    assert res.returncode == 1, res.stderr
    assert sorted(res.stdout.splitlines()) == ["even 2 2", "even 4 6", "odd 1 1"]
    assert "done: 3 outputs, 2 dead letter(s)" in res.stderr
    assert "decode_error" in res.stderr and "13 is unlucky" in res.stderr
    assert "\x1b" not in res.stderr  # the record's control characters are escaped


def test_status_shows_a_row_per_stage_and_every_partition_when_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flaky has a stage of 1 partition and one of 2: two rows, not three; --partitions adds
    the three. A command the credentials may not run is one line, not a traceback."""
    monkeypatch.setenv("FLAKY_CALLS", str(tmp_path / "calls.log"))
    with DevCluster(tmp_path / "c", runners=1) as cluster:
        url = ["--nats", cluster.url]
        deployed = wallaroo("deploy", str(FLAKY), *url, cwd=tmp_path, creds=cluster.creds("deployer"))
        assert deployed.returncode == 0, deployed.stderr
        sent = wallaroo("send", "flaky", "numbers", "1", "2", "13", *url, cwd=tmp_path,
                        creds=cluster.creds("client"))
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: [r["dead letters"] for r in rows_of(status_of(cluster, tmp_path), "busy")]
                   == ["0", "1"])
        summary = status_of(cluster, tmp_path)
        every = wallaroo("status", "--partitions", *url, cwd=tmp_path, creds=cluster.creds("client"))
        denied = wallaroo("scale", "--runners", "2", *url, cwd=tmp_path, creds=cluster.creds("client"))

    stages = rows_of(summary, "busy")
    assert [(r["stage"], r["name"], r["partitions"], r["runners"], r["processed"]) for r in stages] == [
        ("0", "numbers", "1", "r0", "3"), ("1", "running sum", "2", "r0", "3")]
    assert rows_of(summary, "committed seq") == []
    assert [(r["stage"], r["partition"], r["running on"]) for r in rows_of(every.stdout, "committed seq")
            ] == [("0", "0", "r0"), ("1", "0", "r0"), ("1", "1", "r0")]
    assert denied.returncode == 1 and "Traceback" not in denied.stderr
    [error] = [line for line in denied.stderr.splitlines() if line.startswith("error: ")]
    assert "NATS did not answer" in error and "--creds" in error


FLAKY = ROOT / "tests" / "integration" / "apps" / "flaky.py"


def rows_of(text: str, column: str) -> list[dict[str, str]]:
    """The rows of the table in `text` whose header has `column`, as dicts (cells cut where
    the header's names start: column names have single spaces, columns are 3 apart)."""
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if len(lines) > 1 and lines[1].startswith("─"):
            starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
            spans = list(zip(starts, [*starts[1:], None], strict=True))
            header = [lines[0][a:b].strip() for a, b in spans]
            if column in header:
                return [{h: line[a:b].strip() for h, (a, b) in zip(header, spans, strict=True)}
                        for line in lines[2:]]
    return []
