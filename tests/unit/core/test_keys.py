"""wallaroo.core.keys: key files are made with safe modes, read back, and every wrong file
(a public key where the private one belongs, an old shared secret, a private key handed to a
runner) is refused with what to do instead."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from wallaroo.core.errors import KeyFileError, SignatureError
from wallaroo.core.keys import (
    DEPLOY_KEY_ENV,
    DEV_KEYS_DIR,
    TRUSTED_KEYS_ENV,
    Trust,
    deployer_key,
    fingerprint,
    generate_pair,
    generate_state_key,
    load_public_keys,
    load_signing_key,
    load_state_key,
    trusted_key_paths,
)

OLD_SECRET = "k3y+" * 10  # what WALLAROO_DEPLOY_KEY held before: a shared HMAC secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_pair_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # a permissive umask must not leak the private key
    try:
        private, public = generate_pair(tmp_path / "k")
    finally:
        os.umask(old_umask)

    assert (private.name, public.name) == ("deploy.key", "deploy.pub")
    assert mode(private) == 0o600 and mode(public) == 0o644
    key = load_signing_key(private)
    assert [fingerprint(k) for k in load_public_keys(public)] == [key.fingerprint]
    assert key.fingerprint.startswith("ed25519:") and len(key.fingerprint) == len("ed25519:") + 16


def test_generate_never_overwrites(tmp_path: Path) -> None:
    private, _ = generate_pair(tmp_path)
    before = private.read_bytes()

    with pytest.raises(KeyFileError, match="already exists"):
        generate_pair(tmp_path)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_state_key(private)
    assert private.read_bytes() == before


def test_a_signature_verifies_only_for_its_payload_and_key(tmp_path: Path) -> None:
    key = load_signing_key(generate_pair(tmp_path / "a")[0])
    other = load_signing_key(generate_pair(tmp_path / "b")[0])
    trust = Trust.from_files([tmp_path / "a" / "deploy.pub"])
    signature = key.sign(b"payload")

    trust.verify(b"payload", signature, "app")
    with pytest.raises(SignatureError, match="does not verify"):
        trust.verify(b"payloaD", signature, "app")
    with pytest.raises(SignatureError, match=f"signed with key {other.fingerprint}"):
        trust.verify(b"payload", other.sign(b"payload"), "app")
    with pytest.raises(SignatureError, match="garbled"):
        trust.verify(b"payload", f"{key.fingerprint}:not base64!", "app")


def test_a_public_key_is_not_a_signing_key(tmp_path: Path) -> None:
    _, public = generate_pair(tmp_path)

    with pytest.raises(KeyFileError, match="is a public key"):
        load_signing_key(public)


def test_a_private_key_is_never_trusted_by_a_runner(tmp_path: Path) -> None:
    private, _ = generate_pair(tmp_path)

    with pytest.raises(KeyFileError, match="is a private key: a runner holding it could sign code"):
        load_public_keys(private)


def test_an_old_shared_secret_where_a_path_belongs_is_refused_without_echoing_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DEPLOY_KEY_ENV, OLD_SECRET)

    with pytest.raises(KeyFileError) as err:
        deployer_key()

    assert "old-style shared HMAC secret" in str(err.value)
    assert OLD_SECRET not in str(err.value)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=f"{tmp_path / 'deploy.key'}: is not a file"):
        load_signing_key(tmp_path / "deploy.key")


def test_a_secret_written_to_a_file_is_not_a_key(tmp_path: Path) -> None:
    (tmp_path / "deploy.key").write_text(OLD_SECRET)

    with pytest.raises(KeyFileError, match="is not a PEM private key"):
        load_signing_key(tmp_path / "deploy.key")


def test_other_algorithms_are_refused(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.key").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "rsa.pub").write_bytes(rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    with pytest.raises(KeyFileError, match="not an ed25519 key"):
        load_signing_key(tmp_path / "rsa.key")
    with pytest.raises(KeyFileError, match="not an ed25519 key"):
        load_public_keys(tmp_path / "rsa.pub")


def test_one_file_may_hold_several_public_keys(tmp_path: Path) -> None:
    """How keys rotate: runners trust the old and the new key for a while."""
    _, old = generate_pair(tmp_path / "old")
    _, new = generate_pair(tmp_path / "new")
    both = tmp_path / "trusted.pub"
    both.write_bytes(old.read_bytes() + new.read_bytes())

    trust = Trust.from_files([both])

    assert set(trust.keys) == {fingerprint(k) for p in (old, new) for k in load_public_keys(p)}
    assert len(trust.keys) == 2


def test_the_deployer_key_comes_from_the_argument_then_env_then_the_dev_cluster(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEPLOY_KEY_ENV, raising=False)
    assert deployer_key() is None  # nothing anywhere: an unsigned deploy

    dev, env, given = (load_signing_key(generate_pair(tmp_path / d)[0]).fingerprint
                       for d in (DEV_KEYS_DIR, Path("env"), Path("given")))

    def used(path: Path | None = None) -> str | None:
        key = deployer_key(path)
        return key.fingerprint if key else None

    assert used() == dev  # `wallaroo dev` runs in this folder
    monkeypatch.setenv(DEPLOY_KEY_ENV, str(tmp_path / "env" / "deploy.key"))
    assert used() == env
    assert used(tmp_path / "given" / "deploy.key") == given


def test_trusted_key_paths_come_from_flags_else_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRUSTED_KEYS_ENV, os.pathsep.join(["/a.pub", "", "/b.pub"]))

    assert trusted_key_paths() == [Path("/a.pub"), Path("/b.pub")]
    assert trusted_key_paths([Path("/c.pub")]) == [Path("/c.pub")]
    monkeypatch.delenv(TRUSTED_KEYS_ENV)
    assert trusted_key_paths() == []


def test_state_keys_are_long_enough_and_private(tmp_path: Path) -> None:
    path = generate_state_key(tmp_path / "state.key")

    assert mode(path) == 0o600
    assert len(load_state_key(path)) == 64
    (tmp_path / "short.key").write_text("too short\n")
    with pytest.raises(KeyFileError, match="holds 9 bytes; a state key needs at least 32"):
        load_state_key(tmp_path / "short.key")
