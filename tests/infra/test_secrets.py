"""`wallaroo infra secrets` and `wallaroo infra fetch` against SSM's real protocol: a moto server
over HTTP on loopback. The operator puts the cluster's secrets once; a rerun keeps them; --rotate
replaces what it names (and what derives from it), never the state key; a VM fetches its path
into root-only files; a path nobody filled is a one-line error that names the fix."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import boto3  # noqa: TID251 - the test checks the parameter types SSM itself reports
import pytest
from typer.testing import CliRunner

from conftest import REGION, Moto
from wallaroo.cli import app
from wallaroo.core.keys import generate_pair
from wallaroo_runtime.ssm import read_secrets

pytestmark = [pytest.mark.infra, pytest.mark.timeout(120)]
RUNNER_FILES = {"creds.nk", "ca.pem", "deploy.pub", "state.key"}
PARAMETERS = {f"nats/{n}" for n in ("ca.pem", "ca-key.pem", "auth.conf")} | {
    f"runner/{n}" for n in RUNNER_FILES} | {"autoscaler/creds.nk", "autoscaler/ca.pem"} | {
    f"operator/{n}" for n in ("deployer.nk", "client.nk", "ca.pem")}


def wallaroo(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.output


def put(moto: Moto, tmp_path: Path, *more: str, deploy_pub: Path | None = None) -> dict[str, str]:
    """Run `wallaroo infra secrets`; {parameter: status} from the table it prints."""
    if deploy_pub is None:
        deploy_pub = tmp_path / "keys" / "deploy.pub"
        if not deploy_pub.exists():
            generate_pair(deploy_pub.parent)
    code, out = wallaroo("infra", "secrets", "--name", "demo", "--region", REGION, "--deploy-pub",
                         str(deploy_pub), "--out", str(tmp_path / "operator"), "--endpoint-url",
                         moto.url, *more)
    assert code == 0, out
    return dict(re.findall(r"^/wallaroo/demo/(\S+)\s+(\w+)$", out, flags=re.MULTILINE))


def stored(moto: Moto) -> dict[str, str]:
    return read_secrets("/wallaroo/demo", REGION, moto.url)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_made_once_as_secure_strings_and_kept_by_a_rerun(moto: Moto, tmp_path: Path) -> None:
    assert put(moto, tmp_path) == dict.fromkeys(PARAMETERS, "created")
    first = stored(moto)
    assert set(first) == PARAMETERS
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=moto.url)
    described = ssm.describe_parameters(MaxResults=50)["Parameters"]
    assert {p["Type"] for p in described} == {"SecureString"}
    assert re.fullmatch(r"[0-9a-f]{64}\n", first["runner/state.key"])
    assert first["autoscaler/creds.nk"] == first["runner/creds.nk"]  # the runner role
    assert first["runner/ca.pem"] == first["operator/ca.pem"] == first["nats/ca.pem"]
    # The operator's own files, private.
    assert mode(tmp_path / "operator") == 0o700
    for name in ("deployer.nk", "client.nk", "ca.pem"):
        path = tmp_path / "operator" / name
        assert mode(path) == 0o600 and path.read_text() == first[f"operator/{name}"]
    assert put(moto, tmp_path) == dict.fromkeys(PARAMETERS, "kept")
    assert stored(moto) == first


def test_rotate_replaces_what_it_names_and_what_derives_from_it(moto: Moto, tmp_path: Path) -> None:
    put(moto, tmp_path)
    before = stored(moto)
    status = put(moto, tmp_path, "--rotate", "runner")
    changed = {"runner/creds.nk", "autoscaler/creds.nk", "nats/auth.conf"}
    assert {n for n, s in status.items() if s != "kept"} == changed
    assert all(status[n] == "rotated" for n in changed)
    after = stored(moto)
    assert after["runner/creds.nk"] != before["runner/creds.nk"]
    status = put(moto, tmp_path, "--rotate", "ca", "--rotate", "client")
    assert {n for n, s in status.items() if s == "rotated"} == {
        "nats/ca.pem", "nats/ca-key.pem", "runner/ca.pem", "autoscaler/ca.pem", "operator/ca.pem",
        "operator/client.nk", "nats/auth.conf"}
    assert stored(moto)["runner/state.key"] == before["runner/state.key"]  # never rotated


def test_a_new_deploy_pub_updates_only_that_parameter(moto: Moto, tmp_path: Path) -> None:
    put(moto, tmp_path)
    _, public = generate_pair(tmp_path / "keys2")
    rotating = tmp_path / "both.pub"  # old and new key while rotating: runners trust both
    rotating.write_text((tmp_path / "keys" / "deploy.pub").read_text() + public.read_text())
    status = put(moto, tmp_path, deploy_pub=rotating)
    assert {n: s for n, s in status.items() if s != "kept"} == {"runner/deploy.pub": "updated"}
    assert stored(moto)["runner/deploy.pub"] == rotating.read_text()


def test_the_state_key_cannot_be_rotated_and_a_private_key_is_no_deploy_pub(moto: Moto,
                                                                           tmp_path: Path) -> None:
    private, public = generate_pair(tmp_path / "keys")
    code, out = wallaroo("infra", "secrets", "--name", "demo", "--region", REGION, "--deploy-pub",
                         str(public), "--out", str(tmp_path / "op"), "--endpoint-url", moto.url,
                         "--rotate", "state")
    assert code == 1 and "cannot rotate ['state']" in out and "Traceback" not in out
    code, out = wallaroo("infra", "secrets", "--name", "demo", "--region", REGION, "--deploy-pub",
                         str(private), "--out", str(tmp_path / "op"), "--endpoint-url", moto.url)
    assert code == 1 and "Traceback" not in out, out
    assert stored(moto) == {}


def test_a_vm_fetches_its_path_into_root_only_files(moto: Moto, tmp_path: Path) -> None:
    put(moto, tmp_path)
    dest = tmp_path / "etc" / "runner"
    code, out = wallaroo("infra", "fetch", "--path", "/wallaroo/demo/runner", "--dest", str(dest),
                         "--region", REGION, "--endpoint-url", moto.url)
    assert code == 0, out
    assert {p.name for p in dest.iterdir()} == RUNNER_FILES  # nothing of another reader's
    assert mode(dest) == 0o700 and all(mode(p) == 0o600 for p in dest.iterdir())
    values = stored(moto)
    assert all((dest / n).read_text() == values[f"runner/{n}"] for n in RUNNER_FILES)


def test_an_empty_path_or_no_ssm_is_one_line_naming_the_fix(moto: Moto, tmp_path: Path) -> None:
    code, out = wallaroo("infra", "fetch", "--path", "/wallaroo/nobody/runner", "--dest",
                         str(tmp_path / "d"), "--region", REGION, "--endpoint-url", moto.url)
    assert code == 1 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert "/wallaroo/nobody/runner" in out and "wallaroo infra secrets" in out
    assert not (tmp_path / "d").exists()
    closed = Moto()  # a port nothing listens on
    code, out = wallaroo("infra", "fetch", "--path", "/wallaroo/demo/runner", "--dest",
                         str(tmp_path / "d"), "--region", REGION, "--endpoint-url", closed.url)
    assert code == 1 and "Traceback" not in out and "cannot read SSM parameters" in out, out
