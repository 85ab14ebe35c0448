"""Secrets in AWS SSM Parameter Store: the credentials, certificates and keys a VM built by
infra/ reads at boot with its instance role, so none of them travels in user data.

The only module that talks to SSM (ruff's banned-api holds the line, with autoscale/aws.py the
other boto3 owner). Parameters are SecureStrings under one path per reader, e.g.
`/wallaroo/<name>/runner/creds.nk`; a reader fetches its whole path into a folder, one file per
parameter, named by the parameter's last path component.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3  # noqa: TID251 - this module is the owner of the SSM client
from botocore.exceptions import BotoCoreError, ClientError  # noqa: TID251 - its errors, said in one line

from wallaroo.core.errors import WallarooError
from wallaroo.core.keys import replace_file

FILL_COMMAND = "wallaroo infra secrets"  # what puts the parameters there in the first place
READ, WRITE = "read", "write"


class SecretsError(WallarooError):
    """SSM refused or could not be reached: the message says which path and why."""


class NoSecretsError(SecretsError, LookupError):
    """A path holds no parameter at all: nobody filled it, or the reader may not see it."""

    def __init__(self, path: str, region: str) -> None:
        self.path, self.region = path, region
        super().__init__(
            f"no SSM parameter under {path} in region {region}: fill it with `{FILL_COMMAND} "
            "--name NAME --region REGION ...` before the VMs boot, and check the instance role "
            "may read that path"
        )


def _client(region: str, endpoint_url: str | None) -> Any:
    # boto3 clients are generated at runtime and untyped: Any is the honest type.
    return boto3.client("ssm", region_name=region, endpoint_url=endpoint_url)


def _path(path: str) -> str:
    """`/a/b/` and `a/b` -> `/a/b`: SSM names are absolute, with no trailing slash."""
    return "/" + path.strip("/")


def _failed(what: str, path: str, err: Exception) -> SecretsError:
    if isinstance(err, ClientError):
        reason = f"{err.response['Error'].get('Code')}: {err.response['Error'].get('Message')}"
    else:
        reason = str(err)
    return SecretsError(f"cannot {what} SSM parameters under {path}: {reason}")


def _parameters(client: Any, path: str) -> Iterator[dict[str, Any]]:
    """Every parameter under `path` and below, decrypted, page after page."""
    pages = client.get_paginator("get_parameters_by_path").paginate(
        Path=path, Recursive=True, WithDecryption=True)
    for page in pages:
        yield from page["Parameters"]


def read_secrets(path: str, region: str, endpoint_url: str | None = None) -> dict[str, str]:
    """{name relative to `path`: value} of every parameter below `path` (empty when none)."""
    path = _path(path)
    try:
        found = list(_parameters(_client(region, endpoint_url), path))
    except (BotoCoreError, ClientError) as err:
        raise _failed(READ, path, err) from None
    return {p["Name"][len(path) + 1:]: p["Value"] for p in found}


def put_secrets(path: str, values: Mapping[str, str], region: str, endpoint_url: str | None = None,
                *, overwrite: bool = False) -> list[str]:
    """Put each {relative name: text} under `path` as a SecureString (encrypted with the
    account's AWS-managed aws/ssm key). Without `overwrite`, a name already there is kept as
    it is. Returns the names written."""
    path, client, written = _path(path), _client(region, endpoint_url), []
    for name, text in values.items():
        try:
            client.put_parameter(Name=f"{path}/{name}", Value=text, Type="SecureString",
                                 Overwrite=overwrite)
            written.append(name)
        except client.exceptions.ParameterAlreadyExists:
            continue
        except (BotoCoreError, ClientError) as err:
            raise _failed(WRITE, path, err) from None
    return written


def fetch_secrets(path: str, dest: Path, region: str, endpoint_url: str | None = None) -> list[Path]:
    """Write every parameter under `path` into `dest` (made 0700) as a file named by its last
    path component, mode 0600, each replaced whole. Raises NoSecretsError if there is none."""
    values = read_secrets(path, region, endpoint_url)
    if not values:
        raise NoSecretsError(_path(path), region)
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    written = []
    for name, text in sorted(values.items()):
        target = dest / name.rsplit("/", 1)[-1]
        replace_file(target, text.encode(), 0o600)
        written.append(target)
    return written
