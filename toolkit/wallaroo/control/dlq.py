"""`wallaroo dlq`: list dead letters and re-inject them into the stage that rejected them."""

from __future__ import annotations

from collections.abc import Callable

from wallaroo.control.peek import value_text
from wallaroo.control.tables import preview
from wallaroo.core import codec
from wallaroo.core.errors import WallarooError
from wallaroo.core.names import REPLAY_PREFIX, AppNames, with_id_tag
from wallaroo.core.wire import MALFORMED, DeadLetter, Manifest, ReplayBatch
from wallaroo.nats import Nats, Out


class UnknownDeadLetterError(WallarooError, LookupError):
    """`dlq replay --seq N` named a dead letter that is not there."""


async def dead_letters(nats: Nats, manifest: Manifest, limit: int = 1000) -> list[DeadLetter]:
    """The app's dead letters, oldest first, each with its `seq` in the dead-letter stream."""
    names = AppNames(manifest.slug)
    last = await nats.stream_last_seq(names.dlq_stream)
    out: list[DeadLetter] = []
    async for m in nats.read_subject(names.dlq_stream, names.dlq_all, last):
        out.append(DeadLetter.from_wire(m.data, seq=m.seq))
        if len(out) >= limit:
            break
    return out


async def count(nats: Nats, manifest: Manifest) -> int:
    names = AppNames(manifest.slug)
    return await nats.subject_count(names.dlq_stream, names.dlq_all)


async def first_lines(nats: Nats, manifest: Manifest, limit: int = 10) -> list[str]:
    """The first `limit` dead letters, a line each (step, reason, error, record; control
    characters escaped): what `wallaroo dev --input` and `wallaroo run` show at the end."""
    return [f"  {d.step}: {d.reason}: {preview(d.error, 120)} (record {preview(record_text(d))})"
            for d in await dead_letters(nats, manifest, limit)]


def record_text(letter: DeadLetter) -> str:
    """The letter's record for a person: a value a runner pickled (a record after a key_by, a
    step's state or micro-batch) as its repr, read without importing or running anything
    (see control/peek.py); a raw record or a malformed message as its bytes."""
    return value_text(letter.payload, pickled=letter.reason != MALFORMED)


async def replay_dead_letters(nats: Nats, manifest: Manifest, seqs: set[int] | None = None) -> int:
    """Re-inject dead letters (all, or those with the given DLQ sequence numbers) into the
    stage that dead-lettered them, then remove them from the dead-letter stream. A letter
    that fails again is dead-lettered again, as a new entry. Returns how many were replayed.
    Letters that are not `replayable` stay where they are: a malformed message would only be
    refused again (and again), and a letter of no stage has nowhere to go."""
    names = AppNames(manifest.slug)
    every = await dead_letters(nats, manifest, limit=100_000)
    unknown = sorted((seqs or set()) - {d.seq for d in every})
    if unknown:
        msg = (f"{manifest.name} has no dead letter with seq {', '.join(map(str, unknown))}: "
               f"`wallaroo dlq list {manifest.slug}` shows the seq of each")
        raise UnknownDeadLetterError(msg)
    letters = [d for d in every if (seqs is None or d.seq in seqs) and d.replayable]
    outs = [_replay_out(names, manifest, d, nats.id_tag) for d in letters]
    await nats.publish_all(outs)
    for d in letters:
        await nats.delete_msg(names.dlq_stream, d.seq)
    return len(outs)


def _replay_out(names: AppNames, manifest: Manifest, letter: DeadLetter,
                id_tag: Callable[[str], str]) -> Out:
    stage, part = letter.stage_index, letter.partition
    if manifest.stages[stage].source is not None:
        payload = codec.pack_batch([letter.payload])
    else:
        payload = ReplayBatch([letter.key], [letter.payload]).to_wire()
    info = manifest.stages[stage]
    if info.source is None and letter.key is not None and part not in info.parts:
        # Its stage was re-partitioned since (wallaroo.core.repartition): the key's
        # partition now, where its state moved.
        part = info.base + codec.partition_of(letter.key, info.partitions)
    subject = names.input(stage, part, info.source is not None)
    # The same id when a replay is run again (JetStream drops the copy), tagged so that no
    # client can publish with it first and have the replay dropped (Nats.id_tag).
    msg_id = f"{REPLAY_PREFIX}{manifest.slug}:{letter.seq}"
    return Out(subject, payload, with_id_tag(msg_id, id_tag(msg_id)))
