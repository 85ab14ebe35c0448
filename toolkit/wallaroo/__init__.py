"""Wallaroo: exactly-once stream processing on NATS JetStream, as plain decorated functions.

    import wallaroo as wl

    @wl.computation(name="double")
    def double(x: int) -> int:
        return x * 2
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each public name loads its module on first use (PEP 562), not all of them at `import
# wallaroo`: an app pays only for what it uses, and the CLI, whose `python -m wallaroo` and
# console script both import this package first, starts without them (0.15 s of every
# `wallaroo dev` before its nats-server could start).
_MODULE_NAMES = {
    "wallaroo.api": ("computation", "computation_multi", "decoder", "encoder", "key_extractor",
                     "spec_of", "state_computation", "state_computation_multi"),
    "wallaroo.batches": ("batch_computation", "state_batch_computation"),
    "wallaroo.builder": ("ApplicationBuilder", "TCPSinkConfig", "TCPSourceConfig", "partition"),
    "wallaroo.connectors": ("FileSink", "FileSource", "HttpSink", "NatsSink", "PartsSink",
                            "S3Sink", "S3Source"),
    "wallaroo.core.errors": ("CallCancelled", "FunctionTimeout", "IdempotencyConflict",
                             "NotJsonError", "PickledArgumentsRefused", "Reject", "RemoteError",
                             "RunnerLost", "WallarooError"),
    "wallaroo.functions": ("App", "CallContext", "Function", "FunctionCall", "Retries",
                           "current_call", "enter", "method"),
    "wallaroo.pipeline": ("Pipeline", "StreamSink", "StreamSource", "source"),
    "wallaroo.plan": ("Application", "Retention", "build_application"),
    "wallaroo.schedules": ("Cron", "Period"),
    "wallaroo.windows": ("Aggregation", "LateRecord", "count_windows", "global_windows",
                         "milliseconds", "minutes", "range_windows", "seconds"),
}
_HOME = {name: module for module, names in _MODULE_NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        msg = f"module 'wallaroo' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


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
