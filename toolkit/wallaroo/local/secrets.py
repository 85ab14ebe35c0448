"""The secrets of a cluster built by infra/, as `wallaroo infra secrets` makes them: what each
SSM parameter under `/wallaroo/<name>/` holds, who reads it, and how a rerun keeps or rotates
it. Pure: values in, values out; the CLI reads and writes SSM.

| parameter | read at boot by |
|---|---|
| `nats/ca.pem`, `nats/ca-key.pem`, `nats/auth.conf` | every NATS node |
| `runner/creds.nk`, `runner/ca.pem`, `runner/deploy.pub`, `runner/state.key` | runners |
| `autoscaler/creds.nk`, `autoscaler/ca.pem` | NATS node 0 (the autoscaler) |
| `operator/deployer.nk`, `operator/client.nk`, `operator/ca.pem` | no VM: the operator |

The CA key lives with the NATS nodes, which issue their own server certificate at boot (each
one knows its addresses only then). That gives a node nothing it lacks: it terminates every
client and route connection already, and the CA signs only certificates that this cluster's
members and clients trust (it is trusted nowhere else).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wallaroo.core.keys import replace_file
from wallaroo.local.auth import ROLES, authorization_config, new_seed, public_key
from wallaroo.local.tls import cert_pem, key_pem, new_ca

# --rotate choices. Never the state key: runners MAC every snapshot and changelog segment with
# it, and refuse those whose MAC does not verify, so a new key would orphan all saved state.
ROTATABLE = ("ca", *ROLES)
SEEDS = {"runner": "runner/creds.nk", "deployer": "operator/deployer.nk",
         "client": "operator/client.nk"}
CA, CA_KEY = "nats/ca.pem", "nats/ca-key.pem"
CA_COPIES = ("runner/ca.pem", "autoscaler/ca.pem", "operator/ca.pem")  # what clients verify with
AUTH, DEPLOY_PUB, STATE_KEY = "nats/auth.conf", "runner/deploy.pub", "runner/state.key"
AUTOSCALER_SEED = "autoscaler/creds.nk"  # the autoscaler connects as a runner (reads lag)
OPERATOR_FILES = {"operator/deployer.nk": "deployer.nk", "operator/client.nk": "client.nk",
                  "operator/ca.pem": "ca.pem"}

Status = Literal["created", "kept", "rotated", "updated"]


@dataclass(frozen=True)
class Plan:
    """Every parameter's value after this run, and what happened to each."""

    values: dict[str, str]
    status: dict[str, Status]

    def changed(self) -> dict[str, str]:
        """The parameters to write: every one not kept as it was."""
        return {n: v for n, v in self.values.items() if self.status[n] != "kept"}


def write_operator_files(values: Mapping[str, str], out: Path) -> list[Path]:
    """The operator's credentials and CA into `out` (0700), each file 0600, replaced whole."""
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    for param, file in OPERATOR_FILES.items():
        replace_file(out / file, values[param].encode(), 0o600)
    return [out / file for file in OPERATOR_FILES.values()]


def ssm_path(name: str, reader: str = "") -> str:
    """`/wallaroo/<name>` or `/wallaroo/<name>/<reader>`: the path infra/ gives each reader."""
    return f"/wallaroo/{name}" + (f"/{reader}" if reader else "")


def plan(existing: Mapping[str, str], cluster: str, deploy_pub: str,
         rotate: Collection[str] = ()) -> Plan:
    """What the parameters become: those in `existing` kept unless their kind is in `rotate`,
    the missing ones made, the derived ones (CA copies, auth.conf) made from those."""
    unknown = set(rotate) - set(ROTATABLE)
    if unknown:
        msg = f"cannot rotate {sorted(unknown)}: choose from {', '.join(ROTATABLE)}"
        raise ValueError(msg)
    values = {**_seeds(existing, rotate), **_ca(existing, cluster, rotate)}
    values[AUTOSCALER_SEED] = values[SEEDS["runner"]]
    values |= {copy: values[CA] for copy in CA_COPIES}
    values[AUTH] = authorization_config({r: public_key(values[SEEDS[r]].encode()) for r in ROLES})
    values[STATE_KEY] = existing.get(STATE_KEY) or secrets.token_hex(32) + "\n"
    values[DEPLOY_PUB] = deploy_pub
    return Plan(values, {n: _status(n, v, existing) for n, v in values.items()})


def _seeds(existing: Mapping[str, str], rotate: Collection[str]) -> dict[str, str]:
    return {param: existing[param] if param in existing and role not in rotate
            else new_seed().decode() + "\n" for role, param in SEEDS.items()}


def _ca(existing: Mapping[str, str], cluster: str, rotate: Collection[str]) -> dict[str, str]:
    if CA in existing and CA_KEY in existing and "ca" not in rotate:
        return {CA: existing[CA], CA_KEY: existing[CA_KEY]}
    ca, key = new_ca(f"wallaroo {cluster} cluster CA")
    return {CA: cert_pem(ca).decode(), CA_KEY: key_pem(key).decode()}


def _status(name: str, value: str, existing: Mapping[str, str]) -> Status:
    if name not in existing:
        return "created"
    if existing[name] == value:
        return "kept"
    return "updated" if name == DEPLOY_PUB else "rotated"
