"""Where a PartsSink writes its parts: a local directory or an S3 prefix. Each part is written
whole or not at all, and never twice.

Local: a part is written to `<target>/_staging/<name>.<random>` and fsynced (`stage`), then
renamed to `<target>/<name>` and the directory fsynced (`commit`). A crash between the two
leaves only a staged file, which no reader looks at and `clear_staging` removes at the next
start; the output message was not acked, so it comes again and is written then. A crash after
the rename leaves a whole part: the message comes again and finds it (`existing`).

S3: one PUT of the final key (a PUT is atomic: a reader sees no object or the whole one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Protocol

from wallaroo_runtime.connectors.framing import PARTS_STAGING, is_part_of
from wallaroo_runtime.connectors.sources import open_s3
from wallaroo_runtime.durable import fsync_dir

log = logging.getLogger("wallaroo.connectors")


class PartStore(Protocol):
    async def existing(self, slug: str) -> set[str]:
        """Names of app `slug`'s parts there now. Call once at start: it also clears what
        a crashed writer of this app left half-written."""
        ...

    async def write(self, name: str, data: bytes) -> None: ...

    async def close(self) -> None: ...


# --- local directory --------------------------------------------------------------------------


def stage(target: Path, name: str, data: bytes) -> Path:
    """Step 1: the part's bytes, durable under `_staging` (unique name: a zombie writer of
    the same part never writes into our file)."""
    staging = target / PARTS_STAGING
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{name}.{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(tmp: Path, final: Path) -> None:
    """Step 2: the staged file becomes the part, atomically (same filesystem: `_staging` is
    inside the target), and the rename is made durable."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_part(target: Path, name: str, data: bytes) -> bool:
    """Both steps; False (nothing written) when the part is there already."""
    final = target / name
    if final.exists():
        return False
    commit(stage(target, name, data), final)
    return True


def clear_staging(target: Path, slug: str) -> int:
    """Remove app `slug`'s staged files (left by a crash); how many. Other apps' staged files
    stay: they may be writing to the same target right now."""
    staging = target / PARTS_STAGING
    if not staging.is_dir():
        return 0
    stale = [e for e in os.scandir(staging) if is_part_of(slug, e.name)]
    for entry in stale:
        Path(entry.path).unlink(missing_ok=True)
    return len(stale)


def existing_parts(target: Path, slug: str) -> set[str]:
    target.mkdir(parents=True, exist_ok=True)
    return {e.name for e in os.scandir(target) if is_part_of(slug, e.name) and e.is_file()}


class LocalParts:
    """Blocking file IO runs in a thread: the event loop carries the runner's heartbeats."""

    def __init__(self, target: Path) -> None:
        self.target = target

    async def existing(self, slug: str) -> set[str]:
        cleared = await asyncio.to_thread(clear_staging, self.target, slug)
        if cleared:
            log.info("%s: removed %d half-written part(s) of %s from %s", self.target, cleared,
                     slug, PARTS_STAGING)
        return await asyncio.to_thread(existing_parts, self.target, slug)

    async def write(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(write_part, self.target, name, data)

    async def close(self) -> None:
        """Nothing held open: every write opens, fsyncs and closes its file."""


# --- S3 ---------------------------------------------------------------------------------------


class S3Parts:
    """Parts are objects under `prefix`. What is there is listed once at start, not asked per
    part (HEAD): one request per thousand parts instead of one per part, and while this sink
    holds its lease nobody else writes the app's parts."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        self.store = open_s3(bucket, prefix, endpoint_url)

    async def existing(self, slug: str) -> set[str]:
        return set(await self.store.list(f"part-{slug}-"))

    async def write(self, name: str, data: bytes) -> None:
        # S3Store retries transient errors, then raises: the sink restarts, nothing skipped.
        await self.store.put(name, data)

    async def close(self) -> None:
        await self.store.close()
