"""Reading an app's outputs (`wallaroo tail`, `wallaroo dev`'s printer)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from wallaroo.core import codec
from wallaroo.core.errors import UnknownNameError
from wallaroo.core.names import AppNames
from wallaroo.core.wire import Manifest
from wallaroo.nats import Nats


async def tail(nats: Nats, manifest: Manifest, sink: str | None, start_seq: int = 1
               ) -> AsyncIterator[tuple[int, str, list[bytes]]]:
    """(stream seq, sink name, encoded outputs) per output message, following the stream.
    One message carries the outputs of one commit of one partition."""
    names = AppNames(manifest.slug)
    if sink is not None and sink not in manifest.sinks:
        raise UnknownNameError(kind="sink", name=sink, known=manifest.sinks)
    by_subject = {names.out(s): s for s in manifest.sinks}
    subject = names.out(sink) if sink else names.out_all
    async for m in nats.tail(names.out_stream, subject, start_seq):
        yield m.seq, by_subject.get(m.subject, m.subject), codec.unpack_batch(m.data)
