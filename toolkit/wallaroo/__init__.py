"""Wallaroo: exactly-once stream processing on NATS JetStream, as plain decorated functions.

    import wallaroo as wl

    @wl.computation(name="double")
    def double(x: int) -> int:
        return x * 2
"""

from wallaroo.api import (
    computation,
    computation_multi,
    decoder,
    encoder,
    key_extractor,
    spec_of,
    state_computation,
    state_computation_multi,
)
from wallaroo.batches import batch_computation, state_batch_computation
from wallaroo.builder import ApplicationBuilder, TCPSinkConfig, TCPSourceConfig, partition
from wallaroo.connectors import (
    FileSink,
    FileSource,
    HttpSink,
    NatsSink,
    PartsSink,
    S3Sink,
    S3Source,
)
from wallaroo.core.errors import (
    CallCancelled,
    FunctionTimeout,
    IdempotencyConflict,
    NotJsonError,
    PickledArgumentsRefused,
    Reject,
    RemoteError,
    RunnerLost,
    WallarooError,
)
from wallaroo.functions import (
    App,
    CallContext,
    Function,
    FunctionCall,
    Retries,
    current_call,
    enter,
    method,
)
from wallaroo.pipeline import Pipeline, StreamSink, StreamSource, source
from wallaroo.plan import Application, Retention, build_application
from wallaroo.schedules import Cron, Period
from wallaroo.windows import (
    Aggregation,
    LateRecord,
    count_windows,
    global_windows,
    milliseconds,
    minutes,
    range_windows,
    seconds,
)

__all__ = [
    "Aggregation",
    "App",
    "Application",
    "ApplicationBuilder",
    "CallCancelled",
    "CallContext",
    "Cron",
    "FileSink",
    "FileSource",
    "Function",
    "FunctionCall",
    "FunctionTimeout",
    "HttpSink",
    "IdempotencyConflict",
    "LateRecord",
    "NatsSink",
    "PartsSink",
    "NotJsonError",
    "Period",
    "PickledArgumentsRefused",
    "Pipeline",
    "Reject",
    "RemoteError",
    "Retention",
    "Retries",
    "RunnerLost",
    "S3Sink",
    "S3Source",
    "StreamSink",
    "StreamSource",
    "TCPSinkConfig",
    "TCPSourceConfig",
    "WallarooError",
    "build_application",
    "computation",
    "computation_multi",
    "batch_computation",
    "count_windows",
    "global_windows",
    "current_call",
    "decoder",
    "encoder",
    "enter",
    "key_extractor",
    "method",
    "partition",
    "milliseconds",
    "minutes",
    "range_windows",
    "seconds",
    "source",
    "spec_of",
    "state_batch_computation",
    "state_computation",
    "state_computation_multi",
]
__version__ = "0.1.0"
