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
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wallaroo dev CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in HOSTS]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in IPS]
    server = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_name,
                 key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(tls.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), 0o600)
    _write(tls.cert, server.public_bytes(pem), 0o644)
    _write(tls.ca, ca.public_bytes(pem), 0o644)  # last: its presence says the set is whole


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


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` whole, created with `mode` (a key is never readable by others, even
    for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
