"""Every message that crosses a process, as a frozen dataclass with `to_wire()` / `from_wire()`.

Both sides write and read through these classes only: the CLI and the runners, one runner and
another. Bytes that do not parse raise `WireError`, one typed error, whatever was wrong with them
(bad JSON or msgpack, a missing field, a field of the wrong type).

| message | written by | read by | where |
|---|---|---|---|
| Manifest | deploy | runners, CLI | KV `WL_APPS` |
| CommitRecord | partition owner | the next owner, checkpoints | changelog subject |
| DeadLetter | partition owner | `wallaroo dlq` | dead-letter stream |
| ReplayBatch | `wallaroo dlq replay` | the stage's owner | data subject |
| Heartbeat | runner | leader, status, autoscaler | KV `WL_MEMBERS` |
| Assignment | leader | runners, status | KV `WL_ASSIGN` |
| Holder | lease / leader holder | runners, status | KV `WL_LEASES`, `WL_LEADER` |
| Retirement | leader | runners, status | KV `WL_LAYOUTS` |
| RunnersWish | `wallaroo scale`, autoscaler | the local pool (`wallaroo dev`) | KV `WL_CONTROL` |
| CallRequest | a caller (`.remote`, `.spawn`, `.map`) | the runner that runs it | calls stream |
| CallResult | the runner that ran it (first write wins) | every caller of that call id | KV `WL_RESULTS` |
| IdempotencyClaim | the first caller with a key | later callers with that key | KV `WL_IDEMPOTENCY` |
| CancelNotice | `FunctionCall.cancel`, `calls cancel` | the runner running the call | `wl._cancel.<id>` |
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, TypeVar

import msgpack

from wallaroo.core.codec import STR_ERRORS
from wallaroo.core.errors import UnknownNameError, WireError
from wallaroo.nats.protocol import Out

T = TypeVar("T")
Part = tuple[int, int]  # (stage index, partition)
COMMIT_FORMAT = 1
MANIFEST_FORMAT = 1
REPLAY_FORMAT = 1
MALFORMED = "malformed_message"  # the dead-letter reason of a message whose bytes do not decode


def _parse(what: str, data: bytes, build: Callable[[Any], T]) -> T:
    """`build(decoded)`, where any failure to parse or build is a WireError naming `what`."""
    try:
        return build(data)
    except WireError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError,
            msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise WireError(what, f"{type(err).__name__}: {err}") from err


def _json(data: bytes) -> Any:
    return json.loads(data)




def _msgpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors=STR_ERRORS)


def _pack(body: Any) -> bytes:
    return bytes(msgpack.packb(body, use_bin_type=True, unicode_errors=STR_ERRORS))


def _known(cls: type[Any], d: Mapping[str, Any]) -> dict[str, Any]:
    """`d` without the fields `cls` does not know: a newer writer's additions, which an
    older reader (a CLI behind its cluster) skips instead of refusing the whole message."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _str_map(d: Any, cast: Callable[[Any], T]) -> dict[str, T]:
    if not isinstance(d, dict):
        msg = f"expected a map, got {type(d).__name__}"
        raise TypeError(msg)
    return {str(k): cast(v) for k, v in d.items()}


def part_key(part: Part) -> str:
    """The one spelling of a (stage, partition) as a map key on the wire: "stage.partition"."""
    return f"{part[0]}.{part[1]}"


def parse_part_key(key: str) -> Part:
    stage, part = key.split(".")
    return int(stage), int(part)


# --- deploy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageInfo:
    index: int
    name: str
    partitions: int
    source: str | None
    target: int | None
    sinks: list[str]
    # A source's decoder framing (Wallaroo's header_length, length_fmt): how `wallaroo send
    # --file` splits a file into records; None: lines.
    header_length: int | None = None
    length_fmt: str | None = None
    # The layout (wallaroo.core.repartition): partitions are numbered from `base`;
    # `prev` ([base, count]) is the layout a redeploy with another count drains into it.
    base: int = 0
    prev: list[int] | None = None

    @property
    def parts(self) -> range:
        """The numbers of its partitions in the current layout."""
        return range(self.base, self.base + self.partitions)

    @property
    def prev_parts(self) -> range:
        """The numbers of the partitions of the layout it drains (none: empty)."""
        return range(self.prev[0], self.prev[0] + self.prev[1]) if self.prev else range(0)

    @property
    def run_parts(self) -> list[int]:
        """Every partition runners run: the current layout's and the drained one's."""
        return [*self.prev_parts, *self.parts]


@dataclass(frozen=True)
class FunctionInfo:
    """A serverless function (or a class's methods) as a deployed app exposes it."""

    name: str  # "square", or "Model" for a class whose methods are "Model.<method>"
    methods: list[str]  # a class's methods; [] for a function
    concurrency: int
    timeout: float
    schedule: str  # "" or how it is scheduled ("every 30s", "cron */5 * * * * UTC")
    serializer: str = "pickle"  # how it takes arguments and returns values: pickle or json


@dataclass(frozen=True)
class Manifest:
    name: str
    slug: str
    version: str
    python: str
    cloudpickle: str
    partitions: int
    stages: list[StageInfo]
    sinks: list[str]
    by_value_modules: list[str]
    created: float
    signature: str = ""
    format: int = MANIFEST_FORMAT
    requirements: list[str] = field(default_factory=list)
    functions: list[FunctionInfo] = field(default_factory=list)
    job: bool = False  # every source is bounded: the app runs to an end (`wallaroo run`)
    delivered_sinks: list[str] = field(default_factory=list)  # connector sinks, run by runners

    def to_wire(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> Manifest:
        def build(raw: bytes) -> Manifest:
            d = _json(raw)
            d["stages"] = [StageInfo(**_known(StageInfo, s)) for s in d["stages"]]
            d["functions"] = [FunctionInfo(**f) for f in d.get("functions", [])]
            return cls(**d)

        return _parse("manifest", data, build)

    @property
    def deploy_id(self) -> str:
        """One deploy of this version: a version deployed again (say, signed with another
        key) is another deploy, and a runner's refusal names the one it refused."""
        return f"{self.version}@{self.created!r}"

    def unsigned_wire(self) -> bytes:
        """The manifest as the deployer signs it (with its artifact's sha256): all of it but
        the signature."""
        return replace(self, signature="").to_wire()

    @property
    def artifact_name(self) -> str:
        return f"{self.slug}/{self.version}"

    def require_function(self, name: str) -> FunctionInfo:
        """The function `name`, or UnknownNameError listing the ones the app has."""
        found = self.function(name)
        if found is None:
            known = [f"{f.name}.{m}" for f in self.functions for m in f.methods]
            known += [f.name for f in self.functions if not f.methods]
            raise UnknownNameError(kind="function", name=name, known=sorted(known))
        return found

    def function(self, name: str) -> FunctionInfo | None:
        """The function `name` ("f", or "Cls.method") of this app, None if it has none."""
        owner = name.split(".")[0]
        for f in self.functions:
            if f.name == owner and (f.methods == [] if owner == name else name[len(owner) + 1:] in f.methods):
                return f
        return None


# --- the commit protocol ----------------------------------------------------------------------


@dataclass(frozen=True)
class CommitRecord:
    """One per processed input batch, appended to the partition changelog: everything needed
    to recover without re-running user code (input range, per-producer watermarks, the state
    slots it changed, every output with its deterministic message id)."""

    commit_no: int
    first_seq: int
    last_seq: int
    watermarks: dict[str, int]
    states: dict[str, bytes]
    outs: list[Out]

    def to_wire(self) -> bytes:
        return _pack({
            "v": COMMIT_FORMAT, "n": self.commit_no, "in": [self.first_seq, self.last_seq],
            "wm": self.watermarks, "st": self.states,
            "out": [[o.subject, o.msg_id, o.payload] for o in self.outs],
        })

    @classmethod
    def from_wire(cls, data: bytes) -> CommitRecord:
        return _parse("commit record", data, cls._build)

    @classmethod
    def _build(cls, data: bytes) -> CommitRecord:
        d = _msgpack(data)
        if d.get("v") != COMMIT_FORMAT:
            msg = f"changelog record format {d.get('v')!r} is not {COMMIT_FORMAT}; upgrade the runner"
            raise ValueError(msg)
        return cls(
            commit_no=int(d["n"]), first_seq=int(d["in"][0]), last_seq=int(d["in"][1]),
            watermarks=_str_map(d["wm"], int), states=_str_map(d["st"], bytes),
            outs=[Out(s, bytes(p), m) for s, m, p in d["out"]],
        )


@dataclass(frozen=True)
class DeadLetter:
    """A record that failed for good: where (stage, step), why, and the record itself. The
    engine fills what it knows; the partition owner adds where it ran (`placed`)."""

    stage: str
    step: str
    reason: str
    error: str
    traceback: str
    attempts: int
    key: str | None
    payload: bytes
    rid: tuple[int, int]  # (input message seq, record index in it)
    app: str = ""
    version: str = ""
    ts: float = 0.0
    stage_index: int = -1
    partition: int = -1
    seq: int = 0  # its sequence in the dead-letter stream, once read from there
    subject: str = ""  # where a malformed message arrived ("" for a record's letter)

    def placed(self, app: str, version: str, ts: float, stage_index: int, partition: int) -> DeadLetter:
        return replace(self, app=app, version=version, ts=ts, stage_index=stage_index,
                       partition=partition, seq=0)

    @property
    def replayable(self) -> bool:
        """Can `wallaroo dlq replay` send it back? Not a letter of no stage (a calls-stream
        message), nor a malformed message: the stage would refuse the same bytes again."""
        return self.stage_index >= 0 and self.reason != MALFORMED

    def to_wire(self) -> bytes:
        body = asdict(self)
        del body["seq"]
        if not self.subject:
            del body["subject"]  # so that readers older than the field read record letters
        body["rid"] = list(self.rid)
        return _pack(body)

    @classmethod
    def from_wire(cls, data: bytes, seq: int = 0) -> DeadLetter:
        def build(raw: bytes) -> DeadLetter:
            d = _known(cls, _msgpack(raw))
            rid = d.pop("rid")
            d.pop("seq", None)
            return cls(**d, rid=(int(rid[0]), int(rid[1])), seq=seq)

        return _parse("dead letter", data, build)


@dataclass(frozen=True)
class ReplayBatch:
    """Dead letters of a keyed stage re-injected by `wallaroo dlq replay`: keys and values as
    the stage's owner pickled them (the CLI cannot unpickle app classes, so they stay bytes)."""

    keys: list[str | None]
    blobs: list[bytes]

    def to_wire(self) -> bytes:
        return _pack([REPLAY_FORMAT, self.keys, self.blobs])

    @classmethod
    def from_wire(cls, data: bytes) -> ReplayBatch:
        def build(raw: bytes) -> ReplayBatch:
            body = _msgpack(raw)
            if len(body) == 2:  # written before the format number (the same layout)
                body = [REPLAY_FORMAT, *body]
            version, keys, blobs = body
            if version != REPLAY_FORMAT:
                msg = f"replay format {version!r} is not {REPLAY_FORMAT}; upgrade the runner"
                raise ValueError(msg)
            if len(keys) != len(blobs):
                msg = f"{len(keys)} keys for {len(blobs)} values"
                raise ValueError(msg)
            return cls([None if k is None else str(k) for k in keys], [bytes(b) for b in blobs])

        return _parse("replayed dead letters", data, build)


# --- the cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionReport:
    commits: int
    records: int
    dead: int
    restores: int
    committed_seq: int
    rate: float  # records/s
    msg_rate: float  # input messages/s: what the autoscaler compares with consumer lag
    malformed: int = 0  # input messages dead-lettered whole: their bytes did not decode
    busy_for: float = 0.0  # seconds the user code of the batch in hand has run; 0: none runs


@dataclass(frozen=True)
class SinkReport:
    """A connector sink's deliveries on the runner running it."""

    running: bool = False
    delivered: int = 0
    skipped: int = 0
    rejected: int = 0
    last_seq: int = 0
    pending: int = 0


@dataclass(frozen=True)
class FunctionReport:
    """A function's calls on one runner since it loaded the version."""

    done: int = 0  # finished with a value
    failed: int = 0  # finished with an error (after its retries)
    retried: int = 0  # attempts that failed and were tried again
    cancelled: int = 0
    running: int = 0  # now
    p50_ms: float = 0.0  # latency from the call's creation to its result
    p99_ms: float = 0.0


@dataclass(frozen=True)
class AppReport:
    version: str
    failures: int
    partitions: dict[Part, PartitionReport]
    sinks: dict[str, SinkReport]
    switching_to: str | None = None
    functions: dict[str, FunctionReport] = field(default_factory=dict)
    # Partitions whose worker keeps failing (the runner restarts it): the last error.
    errors: dict[Part, str] = field(default_factory=dict)
    deploy_id: str = ""  # Manifest.deploy_id of what runs: which deploy of `version`

    def _body(self) -> dict[str, Any]:
        return {"version": self.version, "deploy_id": self.deploy_id, "failures": self.failures,
                "partitions": {part_key(k): asdict(v) for k, v in self.partitions.items()},
                "sinks": {k: asdict(v) for k, v in self.sinks.items()},
                "switching_to": self.switching_to,
                "functions": {k: asdict(v) for k, v in self.functions.items()},
                "errors": {part_key(k): v for k, v in self.errors.items()}}

    @classmethod
    def _build(cls, d: Mapping[str, Any]) -> AppReport:
        return cls(str(d["version"]), int(d["failures"]),
                   {parse_part_key(k): PartitionReport(**_known(PartitionReport, v))
                    for k, v in d["partitions"].items()},
                   {str(k): SinkReport(**v) for k, v in d["sinks"].items()},
                   d.get("switching_to"),
                   {str(k): FunctionReport(**v) for k, v in d.get("functions", {}).items()},
                   {parse_part_key(k): v for k, v in _str_map(d.get("errors", {}), str).items()},
                   str(d.get("deploy_id", "")))


@dataclass(frozen=True)
class Heartbeat:
    """What a runner says about itself every tick; its KV entry lapsing means it is gone."""

    id: str
    pid: int
    host: str
    started: float
    ts: float
    tick_failures: int
    apps: dict[str, AppReport]
    errors: dict[str, str]  # app slug -> "<version>: why this runner cannot run it"
    # app slug -> Manifest.deploy_id of the deploy refused: which deploy an error is about
    refused: dict[str, str] = field(default_factory=dict)
    # host:port of the runner's Prometheus /metrics ("" when it serves none)
    metrics: str = ""

    @property
    def partitions(self) -> list[PartitionReport]:
        return [p for a in self.apps.values() for p in a.partitions.values()]

    @property
    def msg_rate(self) -> float:
        """Input messages/s this runner processed lately, over all its partitions."""
        return float(sum(p.msg_rate for p in self.partitions))

    def to_wire(self) -> bytes:
        body = {"id": self.id, "pid": self.pid, "host": self.host, "started": self.started,
                "ts": self.ts, "tick_failures": self.tick_failures,
                "apps": {k: a._body() for k, a in self.apps.items()}, "errors": self.errors,
                "refused": self.refused, "metrics": self.metrics}
        return json.dumps(body).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> Heartbeat:
        def build(raw: bytes) -> Heartbeat:
            d = _json(raw)
            return cls(str(d["id"]), int(d["pid"]), str(d["host"]), float(d["started"]),
                       float(d["ts"]), int(d["tick_failures"]),
                       {str(k): AppReport._build(v) for k, v in d["apps"].items()},
                       _str_map(d["errors"], str), _str_map(d.get("refused", {}), str),
                       str(d.get("metrics", "")))

        return _parse("heartbeat", data, build)


@dataclass(frozen=True)
class Assignment:
    """The leader's word on which runner owns each (stage, partition) of one app."""

    owners: dict[Part, str]

    def to_wire(self) -> bytes:
        return json.dumps({part_key(k): v for k, v in self.owners.items()}, sort_keys=True).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> Assignment:
        def build(raw: bytes) -> Assignment:
            return cls({parse_part_key(k): str(v) for k, v in _json(raw).items()})

        return _parse("assignment", data, build)

    def owned_by(self, runner_id: str) -> set[Part]:
        return {p for p, owner in self.owners.items() if owner == runner_id}


@dataclass(frozen=True)
class Retirement:
    """The leader's word on one app's drained layouts (wallaroo.core.repartition): per stage
    index, its partitions numbered below `retired[stage]` are no longer run, and those below
    `reclaimed[stage]` have had their consumers, changelogs, snapshots and leases removed."""

    retired: dict[int, int] = field(default_factory=dict)
    reclaimed: dict[int, int] = field(default_factory=dict)

    def to_wire(self) -> bytes:
        return json.dumps({"retired": {str(k): v for k, v in self.retired.items()},
                           "reclaimed": {str(k): v for k, v in self.reclaimed.items()}},
                          sort_keys=True).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> Retirement:
        def build(raw: bytes) -> Retirement:
            body = _json(raw)
            return cls({int(k): int(v) for k, v in body["retired"].items()},
                       {int(k): int(v) for k, v in body["reclaimed"].items()})

        return _parse("layout retirement", data, build)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease (a partition's, a connector's) or the leadership: a runner id."""

    runner_id: str

    def to_wire(self) -> bytes:
        return self.runner_id.encode()

    @classmethod
    def from_wire(cls, data: bytes) -> Holder:
        def build(raw: bytes) -> Holder:
            runner_id = raw.decode("utf-8")
            if not runner_id:
                msg = "empty runner id"
                raise ValueError(msg)
            return cls(runner_id)

        return _parse("lease holder", data, build)


@dataclass(frozen=True)
class RunnersWish:
    """How many runners the local pool should run: from `wallaroo scale` or the autoscaler's
    local backend, obeyed by `wallaroo dev`."""

    runners: int

    def to_wire(self) -> bytes:
        return str(self.runners).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> RunnersWish:
        def build(raw: bytes) -> RunnersWish:
            n = int(raw)
            if n < 0:
                msg = f"runner count {n} is negative"
                raise ValueError(msg)
            return cls(n)

        return _parse("runners wish", data, build)


# --- serverless functions -------------------------------------------------------------------


@dataclass(frozen=True)
class CallRequest:
    """One call of a function: its arguments pickled by the caller (cloudpickle of
    `(args, kwargs)`), or the object-store name they were put under when large. The call id
    is the message's Nats-Msg-Id and the key of its result: the idempotency boundary."""

    call_id: str
    app: str  # slug
    function: str  # "f" or "Cls.method"
    args: bytes
    args_ref: str = ""
    created: float = 0.0
    # A new random id, published once: it cannot have a result yet, so the runner need not
    # look for one first (ids that repeat: idempotency keys, stream steps, schedule ticks).
    fresh: bool = False

    def to_wire(self) -> bytes:
        return _pack([self.call_id, self.app, self.function, self.args, self.args_ref,
                      self.created, self.fresh])

    @classmethod
    def from_wire(cls, data: bytes) -> CallRequest:
        def build(raw: bytes) -> CallRequest:
            call_id, app, function, args, ref, created, fresh = _msgpack(raw)
            return cls(str(call_id), str(app), str(function), bytes(args), str(ref),
                       float(created), bool(fresh))

        return _parse("call request", data, build)


CallStatus = Literal["ok", "error", "cancelled"]


@dataclass(frozen=True)
class CallResult:
    """The one recorded outcome of a call (first write wins): its value pickled, or the
    error's type, message, remote traceback and, when it pickles, the exception itself.
    `value_ref` names the object-store entry of a value too large for KV."""

    call_id: str
    status: CallStatus
    value: bytes = b""
    value_ref: str = ""
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    error: bytes = b""  # the pickled exception ("" when it does not pickle)
    attempts: int = 0  # runs of the body in the delivery that finished it
    deliveries: int = 0  # deliveries of the request to runners
    runner: str = ""
    started: float = 0.0
    finished: float = 0.0

    def to_wire(self) -> bytes:
        # A list, not asdict(): this is encoded once per call, on the hot path.
        return _pack([self.call_id, self.status, self.value, self.value_ref, self.error_type,
                      self.error_message, self.traceback, self.error, self.attempts,
                      self.deliveries, self.runner, self.started, self.finished])

    @classmethod
    def from_wire(cls, data: bytes) -> CallResult:
        def build(raw: bytes) -> CallResult:
            fields = _msgpack(raw)
            if len(fields) != 13 or fields[1] not in ("ok", "error", "cancelled"):
                msg = f"not a call result of 13 fields with a known status: {fields[:2]!r}"
                raise ValueError(msg)
            return cls(*fields)

        return _parse("call result", data, build)


@dataclass(frozen=True)
class IdempotencyClaim:
    """(app, function, key) -> the call it names, and a digest of the arguments it was made
    with (the same key with other arguments is a conflict, not a duplicate)."""

    call_id: str
    digest: str

    def to_wire(self) -> bytes:
        return json.dumps([self.call_id, self.digest]).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> IdempotencyClaim:
        def build(raw: bytes) -> IdempotencyClaim:
            call_id, digest = _json(raw)
            return cls(str(call_id), str(digest))

        return _parse("idempotency claim", data, build)


@dataclass(frozen=True)
class CancelNotice:
    """Cancel a call. Runners serving `function` ("": whichever function it is) record the
    cancel as the call's result (callers may not write results); the runner running it stops
    it, and with `terminate` replaces its process if it runs in a thread."""

    call_id: str
    terminate: bool = False
    function: str = ""

    def to_wire(self) -> bytes:
        return json.dumps([self.call_id, self.terminate, self.function]).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> CancelNotice:
        def build(raw: bytes) -> CancelNotice:
            call_id, terminate, function = _json(raw)
            return cls(str(call_id), bool(terminate), str(function))

        return _parse("cancel notice", data, build)
