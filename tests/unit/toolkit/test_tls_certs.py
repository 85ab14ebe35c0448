"""The dev CA and server certificate: what a TLS client checks, made and kept right."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509

from wallaroo.local.natsserver import NatsServer
from wallaroo.local.tls import ensure_tls


def test_the_server_certificate_verifies_against_the_ca_for_loopback(tmp_path: Path) -> None:
    tls = ensure_tls(tmp_path / "tls")

    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # what the client does: the stdlib's default context, the CA as its only trust
    ctx = ssl.create_default_context(cafile=tls.ca)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    ctx.load_cert_chain(tls.cert, tls.key)  # the key is the certificate's


def test_keys_and_their_folder_are_private(tmp_path: Path) -> None:
    tls = ensure_tls(tmp_path / "tls")

    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(tls.folder.stat().st_mode) == 0o700
    assert "PRIVATE KEY" not in tls.ca.read_text() + tls.cert.read_text()


def test_valid_files_are_reused_and_broken_ones_made_anew(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path / "tls")
    ca = first.ca.read_bytes()

    assert ensure_tls(tmp_path / "tls").ca.read_bytes() == ca
    first.key.write_bytes(b"not a key")
    again = ensure_tls(tmp_path / "tls")
    assert again.ca.read_bytes() != ca
    ssl.create_default_context(cafile=again.ca).load_cert_chain(again.cert, again.key)


def test_a_tls_server_is_configured_with_the_certificate_and_says_tls(tmp_path: Path) -> None:
    tls = ensure_tls(tmp_path / "tls")
    server = NatsServer(tmp_path / "nats", port=4999, tls=tls)

    assert server.url == "tls://127.0.0.1:4999"
    assert f'cert_file: "{tls.cert.resolve()}"' in server.config()
    assert NatsServer(tmp_path / "plain", port=4998).url == "nats://127.0.0.1:4998"
