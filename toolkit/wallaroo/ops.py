"""Control-plane operations over NATS: deploy, send, tail, status, dead letters.
The CLI and the dev cluster call these; the runtime is reached only through NATS."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from wallaroo import codec
from wallaroo.errors import NotDeployedError, RecordTooLargeError, UnknownNameError
from wallaroo.names import APPS_BUCKET, ARTIFACTS_BUCKET, CONTROL_BUCKET, REPLAY_PREFIX, AppNames
from wallaroo.natsio import Nats, Out
from wallaroo.packaging import Manifest, build_artifact, load_app

RUNNERS_WANTED = "runners"
SEND_BATCH = 256
PAYLOAD_MARGIN = 1024  # headers and framing on top of a batch
SEND_WINDOW = 64


async def deploy(nats: Nats, app_file: Path, args: list[str] | None = None) -> Manifest:
    """Build the app, store artifact (object store) and manifest (KV), create its streams."""
    app, _ = load_app(app_file, args)
    artifact, manifest = build_artifact(app, app_file)
    await ensure_streams(nats, manifest.slug)
    await nats.obj_put(ARTIFACTS_BUCKET, manifest.artifact_name, artifact)
    await nats.kv_put(APPS_BUCKET, manifest.slug, manifest.to_json())
    return manifest


async def ensure_streams(nats: Nats, slug: str) -> None:
    for stream, (subject, work_queue) in AppNames(slug).streams().items():
        await nats.ensure_stream(stream, [subject], work_queue=work_queue)


async def manifests(nats: Nats) -> list[Manifest]:
    """Every deployed app's manifest."""
    found = []
    for key in await nats.kv_keys(APPS_BUCKET):
        raw = await nats.kv_get(APPS_BUCKET, key)
        if raw is not None:
            found.append(Manifest.from_json(raw))
    return found


async def manifest_of(nats: Nats, app: str) -> Manifest:
    """The deployed manifest of `app` (its name or slug)."""
    deployed = await manifests(nats)
    for m in deployed:
        if app in (m.slug, m.name):
            return m
    raise NotDeployedError(app, [m.slug for m in deployed])


def source_stage(manifest: Manifest, source: str | None) -> tuple[int, int]:
    """(stage index, partitions) of the named source (or of the only one)."""
    sources = {s.source: s for s in manifest.stages if s.source is not None}
    if source is None and len(sources) == 1:
        source = next(iter(sources))
    if source not in sources:
        raise UnknownNameError(kind="source", name=str(source), known=sorted(sources))
    st = sources[source]
    return st.index, st.partitions


def file_producer_id(path: Path) -> str:
    """Same file content -> same message ids, so sending a file again never duplicates."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "f" + h.hexdigest()[:20]


def fit(batch: list[bytes], limit: int, first: int = 0) -> list[bytes]:
    """`batch` packed into as few messages as fit in `limit` bytes each (split in halves, so
    the same input always gives the same messages and ids). `first`: the index of the batch's
    first record in the whole send, for the error."""
    payload = codec.pack_batch(batch)
    if len(payload) <= limit:
        return [payload]
    if len(batch) == 1:
        raise RecordTooLargeError(first, len(batch[0]), limit)
    half = len(batch) // 2
    return fit(batch[:half], limit, first) + fit(batch[half:], limit, first + half)


def batches(records: Iterable[bytes], size: int = SEND_BATCH) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for rec in records:
        batch.append(rec)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def send(
    nats: Nats, manifest: Manifest, source: str | None, records: Iterable[bytes], producer: str,
    batch_size: int = SEND_BATCH, progress: Any = None,
) -> int:
    """Publish records to a source in batches with ids `i:<producer>:<n>`; returns the count."""
    stage, parts = source_stage(manifest, source)
    names = AppNames(manifest.slug)
    window: list[Out] = []
    sent = 0
    limit = nats.max_payload - PAYLOAD_MARGIN
    for n, batch in enumerate(batches(records, batch_size)):
        payloads = fit(batch, limit, sent)
        for k, payload in enumerate(payloads):
            msg_id = f"i:{producer}:{n}" if len(payloads) == 1 else f"i:{producer}:{n}.{k}"
            window.append(Out(names.data(stage, n % parts), payload, msg_id))
        sent += len(batch)
        if len(window) >= SEND_WINDOW:
            await nats.publish_all(window)
            window = []
            if progress:
                progress(sent)
    await nats.publish_all(window)
    if progress:
        progress(sent)
    return sent


async def tail(nats: Nats, manifest: Manifest, sink: str | None, start_seq: int = 1
               ) -> AsyncIterator[tuple[int, str, list[bytes]]]:
    """(stream seq, sink name, encoded outputs) per output message, following the stream.
    One message carries the outputs of one commit of one partition."""
    names = AppNames(manifest.slug)
    if sink is not None and sink not in manifest.sinks:
        raise UnknownNameError(kind="sink", name=sink, known=manifest.sinks)
    by_subject = {names.out(s): s for s in manifest.sinks}
    subject = names.out(sink) if sink else f"wl.{manifest.slug}.out.>"
    async for m in nats.tail(names.out_stream, subject, start_seq):
        yield m.seq, by_subject.get(m.subject, m.subject), codec.unpack_batch(m.data)


@dataclass(frozen=True)
class StageLag:
    stage: int
    name: str
    partitions: int
    pending: int
    ack_pending: int
    missing: int  # partitions whose consumer does not exist yet


async def partition_lags(nats: Nats, manifest: Manifest) -> dict[tuple[int, int], tuple[int, int] | None]:
    """(stage, partition) -> (num_pending, num_ack_pending), None where no consumer exists."""
    names = AppNames(manifest.slug)
    return {
        (st.index, p): await nats.consumer_lag(names.data_stream, AppNames.durable(st.index, p))
        for st in manifest.stages
        for p in range(st.partitions)
    }


async def stage_lags(nats: Nats, manifest: Manifest) -> list[StageLag]:
    return stage_totals(manifest, await partition_lags(nats, manifest))


def stage_totals(manifest: Manifest, by_part: dict[tuple[int, int], tuple[int, int] | None]
                 ) -> list[StageLag]:
    """Per stage, the partition lags of `partition_lags` added up."""
    rows = []
    for st in manifest.stages:
        lags = [by_part[(st.index, p)] for p in range(st.partitions)]
        present = [lag for lag in lags if lag is not None]
        rows.append(StageLag(st.index, st.name, st.partitions, sum(p for p, _ in present),
                             sum(a for _, a in present), len(lags) - len(present)))
    return rows


async def wait_idle(nats: Nats, manifest: Manifest, timeout: float, poll: float = 0.05) -> None:
    """Return once every stage has consumed and acknowledged all its input (checked in stage
    order, twice in a row, so records in flight between stages are seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet = 0
    while quiet < 2:
        if loop.time() > deadline:
            msg = f"{manifest.name} still has unprocessed input after {timeout:.0f}s"
            raise TimeoutError(msg)
        lags = await stage_lags(nats, manifest)
        idle = all(s.pending == 0 and s.ack_pending == 0 and s.missing == 0 for s in lags)
        quiet = quiet + 1 if idle else 0
        await asyncio.sleep(poll)


async def dead_letters(nats: Nats, manifest: Manifest, limit: int = 1000) -> list[dict[str, Any]]:
    names = AppNames(manifest.slug)
    last = await nats.stream_last_seq(names.dlq_stream)
    out: list[dict[str, Any]] = []
    async for m in nats.read_subject(names.dlq_stream, f"wl.{manifest.slug}.dlq.>", last):
        out.append(msgpack.unpackb(m.data, raw=False) | {"seq": m.seq})
        if len(out) >= limit:
            break
    return out


async def replay_dead_letters(nats: Nats, manifest: Manifest, seqs: set[int] | None = None) -> int:
    """Re-inject dead letters (all, or those with the given DLQ sequence numbers) into the
    stage that dead-lettered them, then remove them from the dead-letter stream. A letter
    that fails again is dead-lettered again, as a new entry. Returns how many were replayed."""
    names = AppNames(manifest.slug)
    letters = [d for d in await dead_letters(nats, manifest, limit=100_000)
               if seqs is None or d["seq"] in seqs]
    outs = [_replay_out(names, manifest, d) for d in letters]
    await nats.publish_all(outs)
    for d in letters:
        await nats.delete_msg(names.dlq_stream, d["seq"])
    return len(outs)


def _replay_out(names: AppNames, manifest: Manifest, letter: dict[str, Any]) -> Out:
    stage, part = letter["stage_index"], letter["partition"]
    if manifest.stages[stage].source is not None:
        payload = codec.pack_batch([letter["payload"]])
    else:
        payload = bytes(msgpack.packb([[letter["key"]], [letter["payload"]]], use_bin_type=True))
    return Out(names.data(stage, part), payload, f"{REPLAY_PREFIX}{manifest.slug}:{letter['seq']}")


def file_lines(path: Path) -> Iterator[bytes]:
    """The file's non-empty lines, without line endings."""
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def fresh_producer_id() -> str:
    return "p" + uuid.uuid4().hex[:20]


async def request_runners(nats: Nats, n: int) -> None:
    """Ask the local cluster (`wallaroo dev`) to run `n` runners."""
    await nats.kv_put(CONTROL_BUCKET, RUNNERS_WANTED, str(n).encode())


async def requested_runners(nats: Nats) -> int | None:
    raw = await nats.kv_get(CONTROL_BUCKET, RUNNERS_WANTED)
    return int(raw) if raw else None
