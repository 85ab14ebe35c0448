"""Where partition snapshots and changelog segments live (DESIGN.md section 6): a small async
key -> bytes store, on a local directory (`file://`, for `wallaroo dev`) or on S3 (`s3://`).

The only module that imports aiobotocore/botocore (ruff's banned-api holds the line).

Keys are relative paths of plain names separated by `/` (`snapshots/app/0/3/000000000040.snap`);
the same key is valid on every store, so a partition can move from a laptop store to S3 by copy.

    >>> import asyncio, tempfile
    >>> async def demo(root: str) -> bytes | None:
    ...     store = open_store(f"file://{root}")
    ...     await store.put("a/b", b"x")
    ...     return await store.get("a/b")
    >>> asyncio.run(demo(tempfile.mkdtemp()))
    b'x'
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import botocore.exceptions  # noqa: TID251 - this module owns the S3 client imports

from wallaroo.core.errors import WallarooError
from wallaroo_runtime.durable import write_atomic

log = logging.getLogger(__name__)
T = TypeVar("T")
ENDPOINT_ENV = "WALLAROO_S3_ENDPOINT"
URL_FORMS = "file:///absolute/dir, file://relative/dir or s3://bucket/prefix"
# Why a reserved prefix: temp files share the target's directory (so os.replace is atomic) and
# must never show up as keys; keys may not have names starting with "." for the same reason.
_TEMP_PREFIX = ".tmp-"


class StateStoreError(WallarooError):
    """Root of the state store's errors."""


class BadStoreUrlError(StateStoreError, ValueError):
    """A state store URL is not one of the accepted forms."""

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        super().__init__(f"state store URL {url!r} {why}; use one of: {URL_FORMS}")


class StateStoreUnavailableError(StateStoreError, ConnectionError):
    """The store did not answer (connection errors or 5xx) after every retry."""

    def __init__(self, url: str, operation: str, attempts: int, cause: BaseException) -> None:
        self.url, self.operation, self.attempts = url, operation, attempts
        super().__init__(
            f"state store {url} failed {operation} {attempts} times, last with: {cause}. "
            f"Check that the S3 endpoint is reachable from this machine (set {ENDPOINT_ENV} for a "
            "non-AWS endpoint) and that the runner has credentials for the bucket; the runner "
            "keeps its changelog in JetStream meanwhile, so nothing committed is lost"
        )


class BucketNotFoundError(StateStoreError, LookupError):
    """The S3 bucket of an `s3://` store does not exist."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"state store {url}: the bucket does not exist. Create it (the terraform in infra/ "
            "does), or point the runner at an existing bucket"
        )


class StateStore(Protocol):
    """Async key -> bytes store. `put` replaces a key atomically (a reader sees the old or
    the new bytes, never a part); `delete` of a missing key is not an error."""

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes | None:
        """The key's bytes, or None when there is no such key."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Every key starting with `prefix` (a plain string prefix), sorted."""
        ...

    async def delete(self, key: str) -> None: ...

    async def sweep(self, prefix: str, older_than: float) -> builtins.list[str]:
        """Remove what writes cut short by a crash left under `prefix` and nobody touched for
        `older_than` seconds (they are no keys: `list` never shows them); what it removed."""
        ...

    async def close(self) -> None: ...


def check_key(key: str) -> str:
    """Return `key` if it is a relative path of plain names, else raise ValueError."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(not p or p.startswith(".") for p in parts):
        msg = (f"state store key {key!r} must be a relative path of names joined by '/', "
               "none empty or starting with '.' (so no '..', no absolute paths)")
        raise ValueError(msg)
    return key


def _check_prefix(prefix: str) -> str:
    """A list prefix is a key, or the start of one (it may end with '/' or be empty)."""
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix


def open_store(url: str) -> StateStore:
    """The store a URL names: `file:///abs/dir`, `file://relative/dir` or `s3://bucket/prefix`.

    For `s3://` the endpoint comes from `WALLAROO_S3_ENDPOINT` when set (a moto or MinIO
    server), else AWS's own; the region from `AWS_REGION`/`AWS_DEFAULT_REGION`, else us-east-1.
    """
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise BadStoreUrlError(url, "has a query or fragment")
    if parts.scheme == "file":
        path = parts.netloc + parts.path
        if not path:
            raise BadStoreUrlError(url, "names no directory")
        return FileStore(Path(path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BadStoreUrlError(url, "names no bucket")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return S3Store(parts.netloc, parts.path.strip("/"),
                       endpoint_url=os.environ.get(ENDPOINT_ENV) or None, region=region)
    raise BadStoreUrlError(url, f"has scheme {parts.scheme!r}, not 'file' or 's3'")


# --- local directory --------------------------------------------------------------------------


class FileStore:
    """Keys are files under `root`. Writes go to a temp file in the target's directory, are
    fsynced, then renamed over the target, so a crash leaves the old bytes or the new ones.
    Blocking file IO runs in a thread: snapshots can be large and the event loop carries
    the runner's heartbeats."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(_write_atomic, self._path(key), data)

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(_read_or_none, self._path(key))

    async def list(self, prefix: str) -> builtins.list[str]:
        return await asyncio.to_thread(self._list, _check_prefix(prefix))

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def sweep(self, prefix: str, older_than: float) -> builtins.list[str]:
        return await asyncio.to_thread(self._sweep, _check_prefix(prefix), older_than)

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    def _list(self, prefix: str) -> builtins.list[str]:
        return sorted(key for key, name in self._walk(prefix) if not name.startswith("."))

    def _sweep(self, prefix: str, older_than: float) -> builtins.list[str]:
        """A write killed between its temp file and the rename leaves the temp file for good
        (SIGKILL runs no cleanup), a snapshot's size each time: removed here. Only the
        untouched ones: a live writer's file grows until its rename."""
        swept = []
        for key, name in self._walk(prefix):
            path = self.root / key
            with contextlib.suppress(FileNotFoundError):  # (renamed or swept meanwhile)
                if name.startswith(_TEMP_PREFIX) and time.time() - path.stat().st_mtime >= older_than:
                    path.unlink()
                    swept.append(key)
        return swept

    def _walk(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(path relative to the root, file name) of every file whose path starts with
        `prefix`; only the deepest directory the prefix names is walked, not the whole store."""
        top = self.root / prefix.rpartition("/")[0]
        for dirpath, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key, name


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data, _TEMP_PREFIX)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):  # a directory is only a key prefix, as on S3
        return None


# --- S3 ---------------------------------------------------------------------------------------

# Connection failures and broken responses: the request may succeed if sent again.
_TRANSIENT = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (*_TRANSIENT, TimeoutError)):
        return True
    return isinstance(exc, botocore.exceptions.ClientError) and _status(exc) >= 500


def _status(exc: botocore.exceptions.ClientError) -> int:
    meta: dict[str, Any] = exc.response.get("ResponseMetadata", {})
    return int(meta.get("HTTPStatusCode", 0))


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    """Keys are objects under `prefix` in `bucket`. S3 puts are atomic already.

    Connection errors, 5xx answers and tries longer than `attempt_timeout` seconds are
    retried `attempts` times in all, waiting `backoff` seconds (doubling, capped at
    `max_backoff`, with jitter) between tries, then raise StateStoreUnavailableError.
    botocore's own retries are off so that this is the only bound. `timeout` caps connecting
    and each socket read. Credentials come from botocore's usual chain (environment, config
    files, instance role).

    Against moto or MinIO: `S3Store(bucket, prefix, endpoint_url="http://127.0.0.1:PORT")`.
    """

    def __init__(
        self, bucket: str, prefix: str, *, endpoint_url: str | None = None,
        region: str = "us-east-1", attempts: int = 5, backoff: float = 0.2,
        max_backoff: float = 5.0, timeout: float = 10.0, attempt_timeout: float = 120.0,
    ) -> None:
        if attempts < 1:
            msg = f"attempts must be at least 1, got {attempts}"
            raise ValueError(msg)
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url, self.region = endpoint_url, region
        self.attempts, self.backoff, self.max_backoff = attempts, backoff, max_backoff
        self.timeout, self.attempt_timeout = timeout, attempt_timeout
        where = f" at {endpoint_url}" if endpoint_url else ""
        self.url = f"s3://{bucket}/{self.prefix}{where}"
        self._stack = AsyncExitStack()
        self._client: Any = None  # aiobotocore clients are generated at runtime and untyped
        self._opening = asyncio.Lock()

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, key: str, data: bytes) -> None:
        full = self._full(check_key(key))
        await self._retry("put", lambda c: c.put_object(Bucket=self.bucket, Key=full, Body=data))

    async def get(self, key: str) -> bytes | None:
        full = self._full(check_key(key))
        try:
            return await self._retry("get", lambda c: self._read(c, full))
        except botocore.exceptions.ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                return None
            raise

    async def _read(self, client: Any, full: str) -> bytes:
        resp = await client.get_object(Bucket=self.bucket, Key=full)
        async with resp["Body"] as body:
            return bytes(await body.read())

    async def list(self, prefix: str) -> builtins.list[str]:
        full = self._full(_check_prefix(prefix))
        keys = await self._retry("list", lambda c: self._list_all(c, full))
        cut = len(self._full(""))
        return sorted(k[cut:] for k in keys)

    async def _list_all(self, client: Any, full: str) -> builtins.list[str]:
        keys: builtins.list[str] = []
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    async def delete(self, key: str) -> None:
        full = self._full(check_key(key))
        await self._retry("delete", lambda c: c.delete_object(Bucket=self.bucket, Key=full))

    async def sweep(self, prefix: str, older_than: float) -> builtins.list[str]:
        """Nothing to sweep: a PUT is one request, stored whole or not at all."""
        return []

    async def close(self) -> None:
        """Close the HTTP connections; the store opens new ones if used again."""
        self._client = None
        await self._stack.aclose()

    async def _open(self) -> Any:
        async with self._opening:
            if self._client is None:
                # Imported here: aiobotocore (and the aiohttp it brings) was a tenth of a
                # second of every runner's start, S3 store or not.
                from aiobotocore.config import AioConfig  # noqa: TID251 - this module owns S3
                from aiobotocore.session import get_session  # noqa: TID251

                # Path-style addressing: custom endpoints (moto, MinIO) have no per-bucket DNS.
                config = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=self.timeout,
                                   read_timeout=self.timeout,
                                   s3={"addressing_style": "path" if self.endpoint_url else "auto"})
                self._client = await self._stack.enter_async_context(get_session().create_client(
                    "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config))
            return self._client

    async def _retry(self, operation: str, call: Callable[[Any], Awaitable[T]]) -> T:
        client = await self._open()
        attempt = 0
        while True:
            attempt += 1
            try:
                # Why a deadline per try: a server that accepts a PUT but never sends
                # "100 Continue" stalls aiohttp with no socket timeout ever firing.
                async with asyncio.timeout(self.attempt_timeout):
                    return await call(client)
            except Exception as e:
                delay = self._delay_or_raise(e, operation, attempt)
            await asyncio.sleep(delay)

    def _delay_or_raise(self, exc: Exception, operation: str, attempt: int) -> float:
        """Seconds to wait before trying again, or raise: `exc` is not transient, or that was
        the last try."""
        if isinstance(exc, botocore.exceptions.ClientError) and _error_code(exc) == "NoSuchBucket":
            raise BucketNotFoundError(self.url) from exc
        if not _is_transient(exc):
            raise exc
        if attempt >= self.attempts:
            raise StateStoreUnavailableError(self.url, operation, attempt, exc) from exc
        # Jitter: runners that lost S3 together must not all come back in step.
        delay = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1)
        log.warning("state store %s: %s failed (%s), try %d/%d, next in %.2fs",
                    self.url, operation, exc, attempt, self.attempts, delay)
        return delay
