"""The keys of the security model (DESIGN.md "Security model"): the deployer's ed25519 key
signs every deploy, runners hold its public half only; runners share a state key that MACs
their snapshots and segments.

Files: a private key is unencrypted PKCS#8 PEM (mode 0600), public keys are SubjectPublicKeyInfo
PEM (a file may hold several, e.g. the old and the new key while rotating), a state key is at
least 32 bytes of text (`wallaroo keys state` writes 64 hex digits).

A signature travels in the manifest as `ed25519:<fingerprint>:<base64>`, so a runner that
refuses it can say which key signed it and which ones it trusts.

    >>> import tempfile
    >>> private, public = generate_pair(Path(tempfile.mkdtemp()))
    >>> key, trust = load_signing_key(private), Trust.from_files([public])
    >>> trust.verify(b"payload", key.sign(b"payload"), "app")
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wallaroo.core.errors import KeyFileError, SignatureError, WallarooError

DEPLOY_KEY_ENV = "WALLAROO_DEPLOY_KEY"  # the deployer's private key file
TRUSTED_KEYS_ENV = "WALLAROO_TRUSTED_KEYS"  # runners: public key files, os.pathsep-separated
STATE_KEY_ENV = "WALLAROO_STATE_KEY"  # runners: the state key file
DEV_KEYS_DIR = Path(".wallaroo/dev/keys")  # where `wallaroo dev` keeps its keys
SCHEME = "ed25519"
MIN_STATE_KEY = 32  # bytes: HMAC-SHA256 keys shorter than its block gain nothing, shorter than this lose
_PEM_END = b"-----END PUBLIC KEY-----"


def fingerprint(public: Ed25519PublicKey) -> str:
    """`ed25519:<16 hex digits>`: a short name for a key in messages (the check uses the key)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{SCHEME}:{hashlib.sha256(raw).hexdigest()[:16]}"


def fingerprints(path: Path) -> list[str]:
    """The fingerprints of the keys in a private or public key file."""
    if b"PRIVATE KEY" in _read(path, "FILE"):
        return [load_signing_key(path).fingerprint]
    return [fingerprint(k) for k in load_public_keys(path)]


# --- files --------------------------------------------------------------------------------


def generate_pair(folder: Path, name: str = "deploy") -> tuple[Path, Path]:
    """Write `<name>.key` (private, 0600) and `<name>.pub` in `folder`; never overwrite."""
    private = Ed25519PrivateKey.generate()
    priv_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    pub_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    priv_path, pub_path = folder / f"{name}.key", folder / f"{name}.pub"
    _refuse_existing(priv_path, pub_path)
    write_new(priv_path, priv_pem, 0o600)
    write_new(pub_path, pub_pem, 0o644)
    return priv_path, pub_path


def generate_state_key(path: Path) -> Path:
    """Write a fresh state key (64 hex digits, 0600) to `path`; never overwrite."""
    _refuse_existing(path)
    write_new(path, secrets.token_hex(32).encode() + b"\n", 0o600)
    return path


def write_public_key(path: Path, public: Ed25519PublicKey) -> Path:
    """Write (or replace) a public key file, e.g. the public half of a deployer's key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise KeyFileError(path, "already exists: move it away first (a key replaced by "
                                     "accident cannot be got back), or write to another --dir")


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start: a secret is never readable by others, even
    for a moment, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is masked by the umask


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` whole (a temporary file renamed over it), created with `mode`: a reader
    never sees half a file, and a secret is never readable by others, even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask
    os.replace(tmp, path)


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise KeyFileError(_shown(path), f"is not a file. {what} is the path of a key file "
                                         "(`wallaroo keys generate` makes them); an old-style "
                                         "shared HMAC secret in its place is no longer accepted")
    return path.read_bytes()


def _shown(path: Path) -> str:
    """How to name a path that is no file: not at all unless it looks like a key file's, since
    it may be an old-style shared secret set where a path now belongs."""
    return str(path) if path.suffix in (".key", ".pub", ".pem") else "(value not shown)"


# --- the deployer's key -------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """The deployer's private key: signs deploys."""

    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, payload: bytes) -> str:
        sig = base64.b64encode(self.private.sign(payload)).decode()
        return f"{self.fingerprint}:{sig}"


def load_signing_key(path: Path) -> SigningKey:
    """The ed25519 private key in `path`; KeyFileError saying what is wrong with it."""
    data = _read(path, f"--key / ${DEPLOY_KEY_ENV}")
    if b"PUBLIC KEY" in data:
        raise KeyFileError(path, "is a public key: deploys are signed with the private key "
                                 "(deploy.key); the public one goes to the runners (--trust)")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:  # encrypted: cryptography asks for the password this way
        raise KeyFileError(path, "is encrypted: wallaroo reads unencrypted PEM keys; keep the "
                                 "file readable by you only (mode 0600)") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyFileError(path, "is not a PEM private key (make one with "
                                 "`wallaroo keys generate`)") from err
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(path, f"holds a {type(private).__name__.lstrip('_')}, not an ed25519 key")
    return SigningKey(private, path)


def deployer_key(path: Path | None = None) -> SigningKey | None:
    """The key deploys are signed with: `path`, else $WALLAROO_DEPLOY_KEY, else the key of
    a `wallaroo dev` cluster in this folder; None when there is none (an unsigned deploy,
    which only runners started with --allow-unsigned take)."""
    if path is not None:
        return load_signing_key(path)
    env = os.environ.get(DEPLOY_KEY_ENV)
    if env:
        return load_signing_key(Path(env))
    dev = DEV_KEYS_DIR / "deploy.key"
    return load_signing_key(dev) if dev.is_file() else None


# --- what runners trust -------------------------------------------------------------------


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """Every ed25519 public key in `path` (one PEM block or several)."""
    data = _read(path, f"--trust / ${TRUSTED_KEYS_ENV}")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(path, "is a private key: a runner holding it could sign code. Give "
                                 "runners the public key (deploy.pub) and keep this one off them")
    blocks = [b + _PEM_END for b in data.split(_PEM_END) if b.strip()]
    keys = [_public_key(path, block) for block in blocks]
    if not keys:
        raise KeyFileError(path, "holds no public key")
    return keys


def _public_key(path: Path, block: bytes) -> Ed25519PublicKey:
    try:
        public = serialization.load_pem_public_key(block)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyFileError(path, "is not a PEM public key (deploy.pub from "
                                 "`wallaroo keys generate`)") from err
    if not isinstance(public, Ed25519PublicKey):
        raise KeyFileError(path, f"holds a {type(public).__name__.lstrip('_')}, not an ed25519 key")
    return public


def trusted_key_paths(given: Sequence[Path] = ()) -> list[Path]:
    """The public key files a runner trusts: `given` (--trust), else $WALLAROO_TRUSTED_KEYS."""
    if given:
        return list(given)
    env = os.environ.get(TRUSTED_KEYS_ENV, "")
    return [Path(p) for p in env.split(os.pathsep) if p]


@dataclass(frozen=True)
class Trust:
    """Whose deploys a runner runs. No keys and `check=True` (the default) refuses every
    deploy; `Trust.anyone()` takes unsigned ones too (`wallaroo runner --allow-unsigned`)."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)  # fingerprint -> key
    check: bool = True

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> Trust:
        return cls({fingerprint(k): k for p in paths for k in load_public_keys(p)})

    @classmethod
    def anyone(cls) -> Trust:
        return cls(check=False)

    @property
    def expected(self) -> str:
        return ", ".join(self.keys) or "no key"

    def verify(self, payload: bytes, signature: str, what: str) -> None:
        """Return if `signature` is a good signature of `payload` by a trusted key, else raise
        SignatureError naming the key found and the ones expected."""
        if not self.check:
            return
        if not self.keys:
            raise SignatureError(what, self.expected, None, "is refused: this runner trusts no "
                                 "deploy key; start it with --trust PUBKEY_FILE (or "
                                 f"${TRUSTED_KEYS_ENV})")
        found, sig = _parse_signature(what, signature, self.expected)
        public = self.keys.get(found)
        if public is None:
            raise SignatureError(what, self.expected, found, f"is signed with key {found}, but this "
                                 f"runner trusts {self.expected}: deploy with the private key of "
                                 "one of them, or add the signer's public key to the runners (--trust)")
        try:
            public.verify(sig, payload)
        except InvalidSignature as err:
            raise SignatureError(what, self.expected, found, f"carries a signature by {found} that "
                                 "does not verify: the manifest or the artifact changed after "
                                 "signing") from err


def _parse_signature(what: str, signature: str, expected: str) -> tuple[str, bytes]:
    """(fingerprint, signature bytes) of `ed25519:<fingerprint>:<base64>`."""
    if not signature:
        raise SignatureError(what, expected, None, f"is unsigned, and this runner runs only "
                             f"deploys signed by {expected}: deploy with --key (or "
                             f"${DEPLOY_KEY_ENV}) set to the matching private key")
    scheme, _, rest = signature.partition(":")
    fp, _, encoded = rest.partition(":")
    if scheme != SCHEME or not fp or not encoded:
        raise SignatureError(what, expected, None, "carries a signature this runner cannot read "
                             "(an old-style HMAC one?): deploy again with an ed25519 key "
                             "(`wallaroo keys generate`)")
    try:
        return f"{SCHEME}:{fp}", base64.b64decode(encoded, validate=True)
    except binascii.Error as err:
        raise SignatureError(what, expected, f"{SCHEME}:{fp}", "carries a garbled signature") from err


def runner_trust(paths: Sequence[Path], allow_unsigned: bool) -> Trust:
    """Whose deploys a runner runs: the keys in `paths` (else $WALLAROO_TRUSTED_KEYS), or
    anyone's with `allow_unsigned`. No key at all is an error: a runner that refuses every
    deploy is better not started."""
    found = trusted_key_paths(paths)
    if allow_unsigned and found:
        msg = "--allow-unsigned with trusted keys (--trust, $WALLAROO_TRUSTED_KEYS): pass one or the other"
        raise WallarooError(msg)
    if allow_unsigned:
        return Trust.anyone()
    if not found:
        msg = ("no trusted deploy key: pass --trust PUBKEY_FILE (the deployer's deploy.pub from "
               f"`wallaroo keys generate`) or set ${TRUSTED_KEYS_ENV}; --allow-unsigned runs "
               "anyone's code and is for a throwaway local cluster only")
        raise WallarooError(msg)
    return Trust.from_files(found)


# --- the state key ------------------------------------------------------------------------


def load_state_key(path: Path) -> bytes:
    """The state key in `path`: its bytes without surrounding whitespace, at least 32 of them."""
    key = _read(path, f"--state-key / ${STATE_KEY_ENV}").strip()
    if len(key) < MIN_STATE_KEY:
        raise KeyFileError(path, f"holds {len(key)} bytes; a state key needs at least "
                                 f"{MIN_STATE_KEY} (`wallaroo keys state` writes a good one)")
    return key
