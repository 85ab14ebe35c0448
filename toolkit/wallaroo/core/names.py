"""Names of everything an app owns in NATS: the wire contract between toolkit and runtime."""

from __future__ import annotations

import re

APPS_BUCKET = "WL_APPS"
ARTIFACTS_BUCKET = "WL_ARTIFACTS"
MEMBERS_BUCKET = "WL_MEMBERS"  # runner heartbeats; entries lapse after the member TTL
LEADER_BUCKET = "WL_LEADER"  # one key, "leader": the runner that assigns partitions
ASSIGN_BUCKET = "WL_ASSIGN"  # per app: (stage, partition) -> owner runner id
LEASES_BUCKET = "WL_LEASES"  # per (app, stage, partition): the runner running it now
LAYOUTS_BUCKET = "WL_LAYOUTS"  # per app: its retired layouts, and how far they are reclaimed
CONTROL_BUCKET = "WL_CONTROL"  # operator wishes, e.g. the local cluster's runner count
CONNECTORS_BUCKET = "WL_CONNECTORS"  # per app and connector source: how far it has published
RESULTS_BUCKET = "WL_RESULTS"  # call id -> its CallResult, first write wins, kept result_ttl
IDEMPOTENCY_BUCKET = "WL_IDEMPOTENCY"  # hash of (app, function, key) -> the call it names
SCHEDULES_BUCKET = "WL_SCHEDULES"  # "<app>.<function>" -> the last tick the leader fired
BLOBS_BUCKET = "WL_BLOBS"  # object store: call arguments and results too large for a message
LEADER_KEY = "leader"
# A runner exiting with this code asks its supervisor (the dev pool, systemd) for a fresh
# process: how a thread running a call cancelled with terminate=True is stopped.
REPLACE_EXIT = 75
RUNNERS_WISH_KEY = "runners"  # in CONTROL_BUCKET: how many runners the local pool should run


class AppNames:
    """Streams and subjects of one app, by its slug."""

    def __init__(self, slug: str) -> None:
        self.slug = slug
        up = slug.upper()
        self.data_stream = f"WL_{up}_DATA"
        self.log_stream = f"WL_{up}_LOG"
        self.out_stream = f"WL_{up}_OUT"
        self.dlq_stream = f"WL_{up}_DLQ"
        self.calls_stream = f"WL_{up}_CALLS"

    def data(self, stage: int, part: int) -> str:
        """Input of a keyed (internal) stage: only runners publish here."""
        return f"wl.{self.slug}.d.{stage}.{part}"

    def source(self, stage: int, part: int) -> str:
        """Input of a source stage: clients publish here (their credentials allow `wl.*.in.>`)."""
        return f"wl.{self.slug}.in.{stage}.{part}"

    def sources(self, stage: int) -> str:
        """Every partition's input of a source stage (a wildcard)."""
        return f"wl.{self.slug}.in.{stage}.*"

    def input(self, stage: int, part: int, source: bool) -> str:
        return self.source(stage, part) if source else self.data(stage, part)

    def control(self, stage: int, part: int) -> str:
        """Control input of a source stage (its end-of-input and micro-batch timer messages):
        only runners publish here. Why apart from `source`: clients may publish anything to a
        source subject, so a message id there is only a dedup key, never a command."""
        return f"wl.{self.slug}.ctl.{stage}.{part}"

    def commands(self, stage: int, part: int, source: bool) -> str:
        """Where a partition honours control message ids (`eoi:`, `tick:`, producer ids): the
        control subject of a source stage, the runner-only input of a keyed stage."""
        return self.control(stage, part) if source else self.data(stage, part)

    def runner_queue(self, subject: str) -> bool:
        """Is `subject` one of the data stream's runner-only subjects (keyed stage inputs,
        control subjects)? What runners publish there is tagged (see `tagged`)."""
        return subject.startswith((f"wl.{self.slug}.d.", f"wl.{self.slug}.ctl."))

    def log(self, stage: int, part: int) -> str:
        return f"wl.{self.slug}.log.{stage}.{part}"

    def out(self, sink: str) -> str:
        return f"wl.{self.slug}.out.{sink_token(sink)}"

    def dlq(self, stage: int) -> str:
        return f"wl.{self.slug}.dlq.{stage}"

    @property
    def out_all(self) -> str:
        """Every sink's output subject."""
        return f"wl.{self.slug}.out.>"

    @property
    def calls_dlq(self) -> str:
        """Dead letters of the calls stream (messages that are no call)."""
        return f"wl.{self.slug}.dlq.calls"

    @property
    def dlq_all(self) -> str:
        """Every stage's dead-letter subject."""
        return f"wl.{self.slug}.dlq.>"

    def call(self, function: str) -> str:
        """Where calls of `function` ("f", or "Cls.method") are published."""
        return f"wl.{self.slug}.call.{function}"

    def calls_of(self, function: str, methods: bool) -> str:
        """What a function's (or a class's, with `methods`) consumer reads."""
        return f"wl.{self.slug}.call.{function}" + (".>" if methods else "")

    @staticmethod
    def function_durable(function: str) -> str:
        return f"fn_{function}"

    def streams(self) -> dict[str, tuple[list[str], bool]]:
        """stream name -> (subject wildcards, work-queue retention?)"""
        return {
            self.data_stream: ([f"wl.{self.slug}.in.>", f"wl.{self.slug}.d.>",
                                f"wl.{self.slug}.ctl.>"], True),
            self.log_stream: ([f"wl.{self.slug}.log.>"], False),
            self.out_stream: ([self.out_all], False),
            self.dlq_stream: ([self.dlq_all], False),
            self.calls_stream: ([f"wl.{self.slug}.call.>"], True),
        }

    @staticmethod
    def durable(stage: int, part: int) -> str:
        return f"wl_{stage}_{part}"

    @staticmethod
    def producer(stage: int, part: int) -> str:
        """Producer id in internal message ids; downstream keeps a watermark per producer."""
        return f"s{stage}.{part}"


def partition_key(slug: str, stage: int, part: int) -> str:
    return f"{slug}.{stage}.{part}"


def connector_token(name: str) -> str:
    """`name` as a NATS KV key part, durable name or S3 key part (ASCII letters, digits, -, _)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


def source_progress_key(slug: str, source: str) -> str:
    """Where a connector source keeps its progress (WL_CONNECTORS), and its lease key."""
    return f"{slug}.src.{connector_token(source)}"


def sink_token(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "_"


REPLAY_PREFIX = "r:"  # message ids of dead letters re-injected by `wallaroo dlq replay`

# End of input (a job's bounded sources): an empty message on every partition of a stage
# from each of its senders (a source, or every partition of the stage routing to it). A
# partition that heard from all its senders flushes what it holds back (windows) in a
# commit marked ENDED, then tells the stage after it. Received ends are kept as watermarks
# "eoi:<sender>" in the commit records, so a restore knows them. Control ids (these, timer
# ticks, producer ids) mean something only on a subject clients cannot write: a source stage's
# `control` subject, a keyed stage's `data` subject (AppNames.commands).
EOI_PREFIX = "eoi:"
LAYOUT_PREFIX = "eol:"  # end-of-layout markers of a re-partitioned stage (core/repartition.py)
ENDED = "eoi!"  # watermark of a partition that flushed at end of input
# Watermark of a source stage's partition: the input records it has committed, all told.
# Committed with the state, so a job's count survives a crash, a move and a resumed run.
RECORDS_IN = "in!"


def eoi_msg_id(sender: str, stage: int, part: int) -> str:
    return f"{EOI_PREFIX}{sender}>{stage}.{part}"


def eoi_sender(msg_id: str) -> str | None:
    """Who sent this end-of-input message, None if it is none."""
    if not msg_id.startswith(EOI_PREFIX):
        return None
    return msg_id[len(EOI_PREFIX):].rpartition(">")[0] or None


# Micro-batch timers: a partition whose buffered batch is due publishes this into its own
# input; the batch fires when the message is processed (so a replay fires it at the same point).
TICK_PREFIX = "tick:"


def tick_msg_id(producer: str, due: float) -> str:
    return f"{TICK_PREFIX}{producer}:{due!r}"


def source_sender(source: str) -> str:
    return f"src.{source}"


def internal_msg_id(producer: str, commit_no: int, k: int) -> str:
    return f"{producer}:{commit_no}:{k}"


def parse_internal(msg_id: str) -> tuple[str, int] | None:
    """(producer, commit number) of a message one of our stages published, else None."""
    if not msg_id.startswith("s"):
        return None
    parts = msg_id.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def is_control_id(msg_id: str) -> bool:
    """Is `msg_id` one a runner gives a control message (end of input, timer tick, a stage's
    output with its producer watermark)? Obeyed only on subjects clients cannot write."""
    return (msg_id.startswith((EOI_PREFIX, TICK_PREFIX, LAYOUT_PREFIX))
            or parse_internal(msg_id) is not None)


# JetStream drops a message whose id it holds already, whatever its subject, across the whole
# stream; and clients may publish with any id to the source subjects of an app's data stream.
# A client that published first with the id a runner will use would have the runner's message
# dropped as a duplicate: a stage output lost, a job that never ends. So what runners publish
# to the data stream's runner-only subjects carries a fresh random tag per publish: no one can
# take its id first. Duplicates it lets through (a re-send, a republish after a restore) are
# harmless: a partition skips a producer's commit it has seen (watermarks), and ends of input
# and timers are idempotent. Parsers ignore the tag (it follows the last field).
TAG_MARK = "#"


def tagged(msg_id: str, tag: str) -> str:
    return f"{msg_id}{TAG_MARK}{tag}"


def untagged(msg_id: str) -> str:
    return msg_id.partition(TAG_MARK)[0]


# Ids that must stay deterministic (a re-sent batch, a re-run replay) yet sit beside
# client-writable subjects end in a tag only the role's credentials make (Nats.id_tag):
# "<id>~<tag>", or the plain id where there are no credentials (an open dev server).
ID_TAG_MARK = "~"


def with_id_tag(msg_id: str, tag: str) -> str:
    return f"{msg_id}{ID_TAG_MARK}{tag}" if tag else msg_id
