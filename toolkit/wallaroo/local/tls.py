"""TLS for a local cluster: a CA of its own and a server certificate it signs, valid for
127.0.0.1 and localhost. Clients verify the server against that CA (`ca.pem`); nothing here
is trusted by anyone else's machine, which is the point: it is only for this cluster.

Files, in one folder (`.wallaroo/dev/tls/` for `wallaroo dev --tls`): `ca.pem`, `server.pem`,
`server-key.pem` (mode 0600). The CA's key is not kept: new certificates mean a new CA, and a
leaked dev folder cannot sign anything else. Files already there are reused while they still
verify and are valid for a day more."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wallaroo.core.errors import WallarooError
from wallaroo.core.keys import replace_file

HOSTS = ("localhost",)
IPS = ("127.0.0.1", "::1")
VALID = datetime.timedelta(days=365)
MARGIN = datetime.timedelta(days=1)  # files expiring sooner than this are made anew


@dataclass(frozen=True)
class Tls:
    """The CA and server certificate of one cluster, kept in `folder`."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server-key.pem"

    def server_config(self) -> str:
        """The `tls` block of nats-server.conf: clients must speak TLS to the client port."""
        return (f"tls {{ cert_file: {json.dumps(str(self.cert.resolve()))}, "
                f"key_file: {json.dumps(str(self.key.resolve()))} }}\n")


def ensure_tls(folder: Path) -> Tls:
    """The certificates in `folder`, made anew unless those there still verify."""
    tls = Tls(folder)
    if not _usable(tls):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        _make(tls)
    return tls


def dev_tls(state_dir: Path) -> Tls:
    """The certificates of a cluster started under `state_dir`: `state_dir/tls`."""
    return ensure_tls(state_dir / "tls")


def _make(tls: Tls) -> None:
    ca, ca_key = new_ca("wallaroo dev CA")
    cert, key = issue(ca, ca_key, "localhost", hosts=HOSTS, ips=IPS)
    replace_file(tls.key, key_pem(key), 0o600)
    replace_file(tls.cert, cert_pem(cert), 0o644)
    replace_file(tls.ca, cert_pem(ca), 0o644)  # last: its presence says the set is whole


def new_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (
        _builder(name, name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return ca, key


def issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str, *,
          hosts: Sequence[str] = (), ips: Sequence[str] = (),
          client: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new key and a certificate for it, signed by `ca`, valid for `hosts` and `ips`; with
    `client`, also usable as a client certificate (a NATS route dials its peer with it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), ca.subject,
                 key.public_key(), datetime.datetime.now(datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_node_cert(ca_dir: Path, ips: Sequence[str], out: Path) -> tuple[Path, Path]:
    """`out/server.pem` and `out/server-key.pem` (0600) for a NATS node at `ips`, signed by the
    CA in `ca_dir` (`ca.pem`, `ca-key.pem`, as `wallaroo infra fetch` writes them): the
    certificate the node serves clients with and presents to its route peers."""
    try:
        ca, ca_key = load_ca((ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca-key.pem").read_bytes())
    except (OSError, ValueError) as err:
        msg = (f"cannot load the cluster CA from {ca_dir} (ca.pem, ca-key.pem): {err}; "
               "`wallaroo infra fetch` writes them")
        raise WallarooError(msg) from None
    cert, key = issue(ca, ca_key, ips[0], ips=ips, client=True)
    out.mkdir(parents=True, exist_ok=True)
    replace_file(out / "server-key.pem", key_pem(key), 0o600)
    replace_file(out / "server.pem", cert_pem(cert), 0o644)
    return out / "server.pem", out / "server-key.pem"


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_ca(cert: bytes, key: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate and its key from PEM; a ValueError when they are not a pair."""
    ca = x509.load_pem_x509_certificate(cert)
    ca_key = serialization.load_pem_private_key(key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.public_key() != ca.public_key():
        msg = "the CA key is not the key of the CA certificate"
        raise ValueError(msg)
    return ca, ca_key


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: datetime.datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                         decipher_only=False)


def _usable(tls: Tls) -> bool:
    """The CA signed the server certificate, the key is its key, and both stay valid a day."""
    try:
        ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
        cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
        key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    soon = datetime.datetime.now(datetime.UTC) + MARGIN
    same_key = key.public_key() == cert.public_key()
    return same_key and min(ca.not_valid_after_utc, cert.not_valid_after_utc) > soon

