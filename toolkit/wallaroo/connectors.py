"""Replayable sources and exactly-once external sinks: the configs a user puts in a pipeline.

They subclass StreamSource / StreamSink, so every pipeline, `wallaroo.testing.run` and
`wallaroo send`/`tail` treat them like the stream ones; on a cluster one runner (under a lease)
also runs each of them (`wallaroo_runtime.connectors`):

    import wallaroo as wl

    pipeline = (wl.source("lines", wl.FileSource("/var/log/app.log"))
                .to(parse)
                .to_sink(wl.S3Sink("archive", bucket="my-bucket", prefix="parsed")))

Guarantees, in one place (each class says its own):

| config | guarantee |
|---|---|
| FileSource, S3Source | each line enters the app once (deterministic ids, resumable progress) |
| FileSink | each output written once, in output-stream order (commit offset sidecar) |
| S3Sink | one object per output message at a deterministic key (a replay rewrites it) |
| PartsSink | a job's part files: each committed once, whole, at a name from (job, partition, batch) |
| HttpSink | each output message POSTed with `Idempotency-Key: <app>:<msg id>` |
| NatsSink | exactly once into a JetStream stream (`Nats-Msg-Id`); at least once on core NATS |

Every sink delivers an output message's *content*: its outputs (as encoded by `encoder`) in
order, each followed by a newline unless it already ends with one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any
from urllib.parse import urlsplit

from wallaroo.api import text_encoder, utf8_decoder
from wallaroo.core.errors import DefinitionError
from wallaroo.pipeline import StreamSink, StreamSource


class ConnectorConfigError(DefinitionError, ValueError):
    """A connector config was given a value it cannot work with."""

    def __init__(self, config: object, field: str, got: object, expected: str) -> None:
        self.connector, self.field, self.got = type(config).__name__, field, got
        super().__init__(f"{self.connector}: {field} must be {expected}, got {got!r}")


def _set(obj: object, **values: object) -> None:
    """Fill a frozen dataclass from a hand-written __init__. Why hand-written: the inherited
    fields (decoder/encoder) come first in a generated __init__, but the connector's own
    required fields (path, bucket, url...) read best first."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _need_text(config: object, field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConnectorConfigError(config, field, value, "a non-empty string")
    return value


def _need_positive(config: object, field: str, value: float) -> float:
    if not isinstance(value, int | float) or value <= 0:
        raise ConnectorConfigError(config, field, value, "a positive number of seconds")
    return float(value)


# --- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class FileSource(StreamSource):
    """Each non-empty line of a local file is a record (line ending removed, then `decoder`).
    With a decoder declaring Wallaroo's framing (`@wallaroo.decoder(header_length=4,
    length_fmt=">I")`) a binary file's records are its length-prefixed frames instead (the
    decoder gets each payload without its header; a frame still being written waits for the
    rest, a bounded file cut inside a frame fails naming the offset); a text file (no NUL in
    its first 64 KiB) still splits by lines, as `wallaroo send --file` does.

    The source follows the file: lines appended later are picked up every `poll` seconds. A
    line counts once it ends with a newline; an unterminated last line is read once the file
    has not grown for `settle` seconds. If the file shrinks (truncated or replaced by a shorter
    one) it is read again from the start as a new generation.

    Guarantee: exactly once into the app. Each batch of lines is published with the message id
    `i:file-<hash of source name, path, generation>:<byte offset of its first line>`. Before a
    batch window is published its byte range is recorded, and after JetStream acknowledged it
    the new offset is recorded (NATS KV bucket WL_CONNECTORS), so a restarted source re-sends
    exactly the same batches (dropped as duplicates) and carries on after them. Limit: a
    source that stays down longer than the data stream's dedup window (5 minutes) may re-send
    the one window it had in flight.

    `bounded=True` makes it a job's input: the file is read up to the size it had when the
    source first started (an unterminated last line included), then the source ends. `path`
    may then be a glob (`logs/*.log`): the files matching it at the start, in name order, each
    up to its size then. An app
    whose sources are all bounded is a job (`wallaroo run`), which finishes once every record
    is processed, its open windows emitted.

    `path` is read on the machine of the runner that runs the source: give an absolute path,
    on a filesystem every runner shares when they run on several machines (under `wallaroo
    dev` they all run on yours).
    """

    _: KW_ONLY  # own fields after the inherited ones, without defaults
    path: str
    poll: float
    settle: float
    bounded: bool

    def __init__(
        self, path: str | os.PathLike[str], decoder: Callable[[bytes], Any] = utf8_decoder, *,
        partitions: int = 1, poll: float = 0.25, settle: float = 1.0, bounded: bool = False,
    ) -> None:
        _set(self, decoder=decoder, partitions=partitions,
             path=_need_text(self, "path", os.fspath(path)),
             poll=_need_positive(self, "poll", poll),
             settle=_need_positive(self, "settle", settle), bounded=bool(bounded))
        if self.is_glob and not self.bounded:
            raise ConnectorConfigError(self, "path", self.path, "a file path (a glob is read as "
                                       "a job's input: pass bounded=True)")

    @property
    def is_glob(self) -> bool:
        """A pattern (`logs/*.log`): the files matching it when the job started, in name order."""
        return any(c in self.path for c in "*?[")


@dataclass(frozen=True, init=False)
class S3Source(StreamSource):
    """Each non-empty line of each S3 object under `prefix` is a record, objects in key order
    (or each length-prefixed frame of a binary object, when `decoder` declares framing: see
    FileSource).

    Every `poll` seconds the source lists the prefix again and reads objects whose keys sort
    after the last one it read, so new objects are picked up when their keys grow (dated or
    numbered names). Objects are read whole and must not be rewritten once written.

    Guarantee: exactly once into the app, as FileSource: ids are
    `i:s3-<hash of source name, bucket, key>:<byte offset of the batch's first line>` and the
    (key, offset) progress lives in NATS KV, so a restart re-sends only duplicates.

    `bounded=True` makes it a job's input: the objects under the prefix when the source first
    starts (up to the last key then) are read, then the source ends.

    Credentials come from botocore's usual chain; `endpoint_url` points at MinIO or moto.
    """

    _: KW_ONLY  # own fields after the inherited ones, without defaults
    bucket: str
    prefix: str
    endpoint_url: str | None
    poll: float
    bounded: bool

    def __init__(
        self, bucket: str, prefix: str = "", decoder: Callable[[bytes], Any] = utf8_decoder, *,
        endpoint_url: str | None = None, partitions: int = 1, poll: float = 5.0,
        bounded: bool = False,
    ) -> None:
        if not isinstance(prefix, str):
            raise ConnectorConfigError(self, "prefix", prefix, "a string")
        _set(self, decoder=decoder, partitions=partitions,
             bucket=_need_text(self, "bucket", bucket), prefix=prefix,
             endpoint_url=endpoint_url, poll=_need_positive(self, "poll", poll),
             bounded=bool(bounded))


# --- sinks ------------------------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class FileSink(StreamSink):
    """Appends every output to a local file, one per line, in output-stream order.

    Guarantee: exactly once. After each append is fsynced, the file's length and the output
    message's stream sequence are written atomically to the sidecar `<path>.commit`. A
    restarted sink first cuts the file back to that length (a half-written append from a
    crash disappears), then resumes after that sequence, so it never double-writes and never
    loses. Outputs re-published by a recovering partition after the dedup window are
    recognised by their commit number and skipped too.

    Delete the file and its sidecar together to write everything again. The file lives on the
    machine of the runner that runs the sink: give an absolute path, on a filesystem every
    runner shares when they run on several machines.
    """

    _: KW_ONLY  # own fields after the inherited ones, without defaults
    path: str

    def __init__(
        self, name: str, path: str | os.PathLike[str],
        encoder: Callable[[Any], bytes | str] = text_encoder,
    ) -> None:
        _set(self, name=name, encoder=encoder, path=_need_text(self, "path", os.fspath(path)))


@dataclass(frozen=True, init=False)
class S3Sink(StreamSink):
    """Writes one S3 object per output message: `<prefix>/<stream seq, 12 digits>-<msg id>.out`,
    holding its outputs one per line. Keys sort in output-stream order.

    Guarantee: exactly once per output message. The key is a function of the message, so a
    redelivery after a crash rewrites the same object with the same bytes. Limit: a partition
    that re-publishes an output after the output stream's dedup window, while the sink was
    restarting, gives a second object (same msg id in the name, a later sequence).
    """

    _: KW_ONLY  # own fields after the inherited ones, without defaults
    bucket: str
    prefix: str
    endpoint_url: str | None

    def __init__(
        self, name: str, bucket: str, prefix: str = "",
        encoder: Callable[[Any], bytes | str] = text_encoder, *, endpoint_url: str | None = None,
    ) -> None:
        if not isinstance(prefix, str):
            raise ConnectorConfigError(self, "prefix", prefix, "a string")
        _set(self, name=name, encoder=encoder, bucket=_need_text(self, "bucket", bucket),
             prefix=prefix.strip("/"), endpoint_url=endpoint_url)


@dataclass(frozen=True, init=False)
class HttpSink(StreamSink):
    """POSTs each output message to `url`: the body is its outputs one per line, with the
    headers `Idempotency-Key: <app>:<msg id>` and `Content-Type: application/octet-stream`.

    Guarantee: at least once per POST, exactly once for a server that honours the
    Idempotency-Key (a redelivery carries the same key). Connection errors, timeouts (each try
    waits at most `timeout` seconds), 429 and 5xx answers are retried with backoff a bounded
    number of times; then the sink stops and the runner restarts it, so nothing is skipped.
    A 4xx answer (other than 429) means the server refuses this message for good: it is
    logged as an error, counted, and the sink moves on.
    """

    _: KW_ONLY  # own fields after the inherited ones, without defaults
    url: str
    timeout: float

    def __init__(
        self, name: str, url: str, encoder: Callable[[Any], bytes | str] = text_encoder,
        timeout: float = 10.0,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ConnectorConfigError(self, "url", url, "an http:// or https:// URL")
        _set(self, name=name, encoder=encoder, url=url,
             timeout=_need_positive(self, "timeout", timeout))


@dataclass(frozen=True, init=False)
class NatsSink(StreamSink):
    """Publishes each output message to `subject` on the app's NATS server: the payload is its
    outputs one per line, with the header `Nats-Msg-Id: <app>:<msg id>`.

    Guarantee: when a JetStream stream captures `subject`, exactly once into that stream (the
    publish is acknowledged and deduplicated by Nats-Msg-Id within the stream's window).
    Otherwise it is a core NATS publish: at least once, and a subscriber may drop repeats by
    the Nats-Msg-Id header.
    """

    _: KW_ONLY  # own fields after the inherited ones, without defaults
    subject: str

    def __init__(
        self, name: str, subject: str, encoder: Callable[[Any], bytes | str] = text_encoder,
    ) -> None:
        _need_text(self, "subject", subject)
        if any(c in subject for c in "*> \t") or subject.startswith("wl."):
            raise ConnectorConfigError(self, "subject", subject,
                                       "a plain subject without wildcards, outside the reserved 'wl.'")
        _set(self, name=name, encoder=encoder, subject=subject)


@dataclass(frozen=True, init=False)
class PartsSink(StreamSink):
    """Writes a job's output as part files a reader can trust: one part per output message
    (the outputs of one commit of one partition, one per line; none for a commit without
    outputs), named

        <target>/part-<app>-s<stage>p<partition>-<commit no, 12 digits>-<k><suffix>

    `target` is a local directory (absolute, on a filesystem every runner shares) or an
    `s3://bucket/prefix` URL (`endpoint_url` points at MinIO or moto).

    Guarantee: every part appears once, whole, and never changes. A local part is written
    under `<target>/_staging/`, fsynced, then renamed to its name (atomic); on S3 it is one
    PUT (atomic). The name comes from the output's message id alone, so a redelivery or a
    replay of a committed batch (even after the output stream's dedup window) finds its part
    there and writes nothing. Readers skip names starting with `_` or `.` (as Hadoop's and
    Spark's `_temporary`): `_staging/` holds only unfinished writes, cleared when the sink
    starts. A target holds the output of one run of a job: clear it before running the job
    again from scratch (`wallaroo run --fresh` refuses a local target that holds parts).
    """

    _: KW_ONLY  # own fields after the inherited ones, without defaults
    target: str
    suffix: str
    endpoint_url: str | None

    def __init__(
        self, name: str, target: str | os.PathLike[str],
        encoder: Callable[[Any], bytes | str] = text_encoder, *, suffix: str = ".txt",
        endpoint_url: str | None = None,
    ) -> None:
        target = _need_text(self, "target", os.fspath(target))
        if target.startswith("s3://") and not urlsplit(target).netloc:
            raise ConnectorConfigError(self, "target", target, "s3://bucket/prefix or a directory")
        if not isinstance(suffix, str) or "/" in suffix or "\\" in suffix:
            raise ConnectorConfigError(self, "suffix", suffix, "a file name ending such as '.txt'")
        _set(self, name=name, encoder=encoder, target=target.rstrip("/") or "/", suffix=suffix,
             endpoint_url=endpoint_url)

    @property
    def s3(self) -> tuple[str, str] | None:
        """(bucket, prefix) of an s3:// target; None for a local directory."""
        if not self.target.startswith("s3://"):
            return None
        parts = urlsplit(self.target)
        return parts.netloc, parts.path.strip("/")


ConnectorSource = FileSource | S3Source
ConnectorSink = FileSink | S3Sink | HttpSink | NatsSink | PartsSink
