"""Connector sources and sinks (the configs are in `wallaroo.connectors`): replayable file and
S3 sources, and exactly-once file, S3, job part, HTTP and NATS sinks, run by runners under leases.

- sources.py: `run_source`, file/S3 lines into the app's data stream, resumable (progress.py)
- sinks.py: `run_sink`, output stream -> external system, idempotent per output message
- parts.py: the PartsSink's part files (staged, then renamed) or S3 objects
- sidecar.py: the FileSink's commit file; framing.py: the pure parts (batches, ids, keys)
- hook.py: `connector_tasks` and `run_leased`, what a runner calls
"""

from wallaroo_runtime.connectors.hook import connector_tasks, run_leased
from wallaroo_runtime.connectors.progress import KvProgress, ProgressStore, SourceProgress
from wallaroo_runtime.connectors.sinks import SinkStats, SinkUnavailableError, run_sink
from wallaroo_runtime.connectors.sources import run_source

__all__ = [
    "KvProgress",
    "ProgressStore",
    "SinkStats",
    "SinkUnavailableError",
    "SourceProgress",
    "connector_tasks",
    "run_leased",
    "run_sink",
    "run_source",
]
