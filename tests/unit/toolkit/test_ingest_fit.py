"""ingest.fit: batches too large for one NATS message split deterministically; a record that
can never fit is a clear error naming it."""

import pytest

from wallaroo.control import ingest
from wallaroo.core import codec
from wallaroo.core.errors import RecordTooLargeError


def test_a_batch_that_fits_is_one_message() -> None:
    assert ingest.fit([b"a", b"b"], 100) == [codec.pack_batch([b"a", b"b"])]


def test_a_large_batch_splits_in_halves_keeping_every_record_in_order() -> None:
    batch = [bytes([65 + i]) * 40 for i in range(8)]
    payloads = ingest.fit(batch, 100)
    assert len(payloads) > 1 and all(len(p) <= 100 for p in payloads)
    assert payloads == ingest.fit(batch, 100)  # the same input, the same messages (and ids)
    import msgpack

    assert [r for p in payloads for r in msgpack.unpackb(p)] == batch


def test_a_record_larger_than_a_message_is_named() -> None:
    with pytest.raises(RecordTooLargeError, match="record 3 .* is 500 bytes"):
        ingest.fit([b"x", b"y", b"z", b"w" * 500], 100)
