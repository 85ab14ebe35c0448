"""Who may connect to a local cluster, and what each may do: one nkey per role, and the
nats-server `authorization` block that gives each role its permissions (server-enforced).

- runner: the app subjects, JetStream (but not deleting streams), KV buckets (but not the
  manifests), the object store (but not the artifacts), acks;
- deployer: everything: manifests, artifacts, stream admin, dead-letter replay;
- client: publish to app sources (`wl.<app>.in.>`) and function calls (`wl.<app>.call.>`),
  cancel calls, claim idempotency keys, put large call arguments, read streams and buckets
  (direct gets, stream and consumer info), follow outputs with ephemeral consumers, hear
  results. Not: publish to stage, control (`wl.<app>.ctl.>`: ends of input, timers),
  changelog, output or dead-letter subjects, write any other
  bucket, ack, create durable consumers, delete or purge anything;
- anyone else: refused at connect.

Seeds are NATS nkey seed files (`<role>.nk`, mode 0600), what nats-py's `nkeys_seed` takes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nkeys

ROLES = ("runner", "deployer", "client")
AUTH_DIR_ENV = "WALLAROO_AUTH_DIR"  # keys every local cluster started here uses (tests share one set)

RUNNER = {
    "publish": {"allow": ["wl.>", "$KV.>", "$O.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>"],
                "deny": ["$KV.WL_APPS.>", "$O.WL_ARTIFACTS.>", "$JS.API.STREAM.DELETE.>"]},
    # The cluster buckets' writes as they are made (cluster.ClusterWatch): what wakes a
    # runner's control loop when a member leaves or the assignment changes, and tells a
    # member gone silent before the server removes its entry. Readable through $JS.API anyway.
    "subscribe": {"allow": ["wl.>", "_INBOX.>", "$KV.WL_MEMBERS.>", "$KV.WL_LEADER.>",
                            "$KV.WL_ASSIGN.>"]},
}
DEPLOYER = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
CLIENT = {
    "publish": {"allow": [
        "wl.*.in.>", "wl.*.call.>", "wl._cancel.>", "$KV.WL_IDEMPOTENCY.>", "$O.WL_BLOBS.>",
        "$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.MSG.GET.*",
        "$JS.API.DIRECT.GET.>", "$JS.API.CONSUMER.INFO.*.*", "$JS.API.CONSUMER.CREATE.*",
        "$JS.FC.>",
    ]},
    "subscribe": {"allow": ["_INBOX.>", "wl._done.>"]},
}
PERMISSIONS = {"runner": RUNNER, "deployer": DEPLOYER, "client": CLIENT}


@dataclass(frozen=True)
class Auth:
    """The role keys of one cluster, kept in `folder`."""

    folder: Path

    def seed(self, role: str) -> Path:
        return self.folder / f"{role}.nk"

    def public_key(self, role: str) -> str:
        return public_key(self.seed(role).read_bytes())

    def server_config(self) -> str:
        """The `authorization` block of nats-server.conf: each role's key and permissions;
        no user without a key (anonymous connections are refused)."""
        return authorization_config({r: self.public_key(r) for r in ROLES})


def new_seed() -> bytes:
    """A fresh user nkey seed, as the `<role>.nk` files hold it (without the newline)."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    """The public key (`U...`) of an nkey seed: what the server config names."""
    return str(nkeys.from_seed(seed.strip()).public_key.decode())


def authorization_config(public_keys: Mapping[str, str]) -> str:
    """The `authorization` block of nats-server.conf for {role: public key}: built from public
    keys only, so whoever renders it (an operator for infra/) needs no seed at hand."""
    users = [{"nkey": public_keys[r], "permissions": PERMISSIONS[r]} for r in ROLES]
    return f"authorization {{ users: {json.dumps(users)} }}\n"


def ensure_auth(folder: Path) -> Auth:
    """The keys in `folder`, made for the roles that have none yet."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for role in ROLES:
        path = folder / f"{role}.nk"
        if not path.exists():
            _write_private(path, new_seed())
    return Auth(folder)


def dev_auth(state_dir: Path) -> Auth:
    """The keys of a cluster started under `state_dir`: $WALLAROO_AUTH_DIR's when set (one
    set for every cluster of a test session), else `state_dir/creds`."""
    shared = os.environ.get(AUTH_DIR_ENV)
    return ensure_auth(Path(shared) if shared else state_dir / "creds")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data + b"\n")
