"""Compaction of a partition's snapshots in a helper process: the full snapshots of big states
are written beside the runner, not by it.

Why a process: a full snapshot re-encodes the whole state (bucketing every key, packing,
hashing: about 25 ms of CPU per 45k keys, 1.5-2.4 s at 1M keys). Encoded in one of the runner's
threads it still runs on the runner's interpreter, and a thread running Python takes the GIL
at each of the event loop's I/O waits: in a harness the loop's round trips fell to 7-13% of
their rate while a 45k-key snapshot was encoded, 5-8% for 2 s at 1M keys. Every partition's
commits and the heartbeats wait on that loop. In a process of its own the work meets the
loop only in the kernel's scheduler, and at a lower priority (`NICENESS`).

What it writes needs nothing from the runner: the stored full snapshot rolled forward through
the deltas after it (`snapshot.latest_chain`, as a restore does) is the partition's state at
the newest delta's commit, so the helper stores that as a full snapshot of the same commit.
Any such snapshot is of committed state (deltas are written after their commit is durable),
so it cannot be wrong even when the partition has moved meanwhile: a stale runner's helper
only writes an older full snapshot, which the newer ones outrank. The runner keeps writing
deltas throughout; the checkpointer asks for a compaction when its deltas have grown to a
quarter of the last full snapshot, and prunes once it is written.

One helper per runner, started at the first compaction and kept: it runs one compaction at a
time, in the order asked. It speaks JSON lines on its stdin and stdout; the first line gives
the store URL and the state key (on a pipe, not in argv or the environment, where other
processes could read it). A runner that dies closes the pipe, and the helper exits once the
compaction in hand is written.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from wallaroo.core.errors import WallarooError
from wallaroo.core.statetable import LazyTable
from wallaroo_runtime import snapshot as snap
from wallaroo_runtime.statestore import StateStore, open_store

log = logging.getLogger("wallaroo.compactor")
# Why lower: compaction may take as long as it likes (the deltas keep the store current),
# while the runner's loop and nats-server on the same cores carry the records' latency.
NICENESS = 10
CLOSE_WAIT = 5.0  # seconds a helper has to finish and exit when its runner stops


class CompactorError(WallarooError):
    """A compaction in the helper process failed, or the helper is gone."""


@dataclass(frozen=True)
class Compacted:
    """A full snapshot the helper wrote: of commit `commit_no`, `size` bytes, `keys` keys,
    `took` seconds from the first read to the write."""

    commit_no: int
    size: int
    keys: int
    took: float


async def compact(store: StateStore, slug: str, stage: int, part: int,
                  state_key: bytes | None = None) -> Compacted | None:
    """Store the partition's newest full snapshot rolled forward through its deltas as a full
    snapshot of the last delta's commit; None when there is no delta to fold in."""
    started = time.monotonic()
    chain = await snap.latest_chain(store, slug, stage, part, state_key)
    if chain is None or chain.deltas == 0:
        return None
    state = chain.snapshot  # a full snapshot (base None), its table restored: only the
    size = await snap.write(store, state, [], state_key)  # changed buckets packed again
    table = state.table  # (its size without decoding it: it holds its new chunks)
    keys = table.size_hint() if isinstance(table, LazyTable) else len(table)
    return Compacted(state.commit_no, size, keys, time.monotonic() - started)


class Compactor:
    """The runner's side: `await compact(slug, stage, part)` has the helper do it."""

    def __init__(self, store_url: str, state_key: bytes | None = None,
                 command: Sequence[str] | None = None) -> None:
        """`command`: what runs the helper (tests give one that fails)."""
        self.store_url, self.state_key = store_url, state_key
        self.command = list(command or [sys.executable, "-m", "wallaroo_runtime.compactor"])
        self._proc: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Compacted | None]] = {}
        self._ids = itertools.count()
        self.started = 0  # helper processes started: one, unless one died

    async def compact(self, slug: str, stage: int, part: int) -> Compacted | None:
        """What the helper wrote (None: no delta to fold); CompactorError if it failed or died.
        Cancelling the wait leaves the compaction to finish (what it writes is valid)."""
        proc = await self._helper()
        assert proc.stdin is not None
        ask = next(self._ids)
        done: asyncio.Future[Compacted | None] = asyncio.get_running_loop().create_future()
        self._waiting[ask] = done
        request = {"id": ask, "slug": slug, "stage": stage, "part": part}
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as err:
            self._waiting.pop(ask, None)
            msg = f"the compactor process is gone ({err})"
            raise CompactorError(msg) from err
        return await done

    @property
    def pid(self) -> int | None:
        """The helper's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def _helper(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        config = {"store": self.store_url,
                  "state_key": None if self.state_key is None else self.state_key.hex()}
        proc.stdin.write(json.dumps(config).encode() + b"\n")
        self._proc, self.started = proc, self.started + 1
        # Each helper's own waiting list: a dead one's end must not fail its successor's asks.
        self._waiting = {}
        self._reading = asyncio.create_task(self._replies(proc, self._waiting))
        log.info("compactor process %d started", proc.pid)
        return proc

    async def _replies(self, proc: asyncio.subprocess.Process,
                       waiting: dict[int, asyncio.Future[Compacted | None]]) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                reply = json.loads(line)
            except ValueError:  # not the helper speaking: it cannot be trusted to answer
                log.error("compactor process %d wrote %r: stopping it", proc.pid, line[:200])
                proc.kill()
                continue  # (its end of output fails what waits)
            done = waiting.pop(reply["id"], None)
            if done is None or done.done():
                continue  # its asker stopped waiting
            if "error" in reply:
                done.set_exception(CompactorError(reply["error"]))
            else:
                done.set_result(None if reply["compacted"] is None else Compacted(**reply["compacted"]))
        code = await proc.wait()
        gone = CompactorError(f"the compactor process exited with code {code}")
        for done in waiting.values():
            if not done.done():
                done.set_exception(gone)
        waiting.clear()

    async def close(self) -> None:
        """Let the helper finish the compaction in hand and exit (killed after CLOSE_WAIT)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), CLOSE_WAIT)
        except TimeoutError:
            log.warning("compactor process %d did not exit in %.0fs: killed", proc.pid, CLOSE_WAIT)
            proc.kill()
            await proc.wait()
        if self._reading is not None:
            await self._reading


# --- the helper process -------------------------------------------------------------------


def serve(lines: TextIO, out: TextIO) -> None:
    """Answer compaction requests read from `lines` until they end (the runner is gone)."""
    config = json.loads(lines.readline() or "null")
    if config is None:
        return  # the runner went before saying anything
    key = None if config["state_key"] is None else bytes.fromhex(config["state_key"])
    store = open_store(config["store"])
    loop = asyncio.new_event_loop()
    try:
        for line in lines:
            request = json.loads(line)
            reply = loop.run_until_complete(_answer(store, request, key))
            out.write(json.dumps(reply) + "\n")
            out.flush()
            trim_malloc()
    finally:
        loop.run_until_complete(store.close())
        loop.close()


async def _answer(store: StateStore, request: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    where = f"{request['slug']}/{request['stage']}/{request['part']}"
    try:
        done = await compact(store, request["slug"], request["stage"], request["part"], key)
    except (WallarooError, OSError, ValueError) as err:  # store errors, corrupt snapshots
        log.warning("compaction of %s failed: %s", where, err)
        return {"id": request["id"], "error": f"compaction of {where} failed: {err}"}
    if done is not None:
        log.info("compacted %s: full snapshot of commit %d, %d keys, %d bytes in %.3fs",
                 where, done.commit_no, done.keys, done.size, done.took)
    return {"id": request["id"], "compacted": None if done is None else asdict(done)}


def trim_malloc() -> bool:
    """Give the heap's free pages back to the system (whether it could: glibc only). Why: a
    compaction's buffers are freed at its end, but glibc keeps the pages, so the helper sat
    at its largest compaction's size between compactions."""
    import ctypes  # here: the helper alone needs it

    try:
        release = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(release(0))


def main() -> None:
    logging.basicConfig(level=os.environ.get("WALLAROO_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.nice(NICENESS)
    replies, sys.stdout = sys.stdout, sys.stderr  # a stray print must not garble a reply
    serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
