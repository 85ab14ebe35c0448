"""`wallaroo runner`'s options reach the runner: the snapshot, segment and compaction offload
byte bounds (see checkpoint.CheckpointConfig) from the command line to each partition's checkpoint
configuration."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from wallaroo.cli import app
from wallaroo_runtime import runner
from wallaroo_runtime.checkpoint import CheckpointConfig


def options_of(monkeypatch: pytest.MonkeyPatch, *args: str) -> runner.RunnerOptions:
    seen: list[runner.RunnerOptions] = []

    def main(url: str, opts: runner.RunnerOptions) -> Any:
        seen.append(opts)

    monkeypatch.setattr(runner, "main", main)
    res = CliRunner().invoke(app, ["runner", "--nats", "nats://127.0.0.1:4222", "--allow-unsigned",
                                   *args])
    assert res.exit_code == 0, res.output
    return seen[0]


def test_the_snapshot_byte_bound_goes_from_the_command_line_to_the_checkpoints(
        monkeypatch: pytest.MonkeyPatch) -> None:
    opts = options_of(monkeypatch, "--snapshot-bytes", "2097152", "--segment-bytes", "65536")

    assert runner.checkpoint_config(opts, None).max_pending_bytes == 2 << 20
    assert runner.checkpoint_config(opts, None).segment_bytes == 64 << 10
    default = runner.checkpoint_config(options_of(monkeypatch), None)
    assert default.max_pending_bytes == CheckpointConfig.max_pending_bytes == 4 << 20
    assert default.segment_bytes == CheckpointConfig.segment_bytes == 1 << 20


def test_the_compaction_offload_bound_reaches_the_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = options_of(monkeypatch, "--offload-compaction-bytes", "0")

    assert runner.checkpoint_config(opts, None).offload_bytes == 0
    default = runner.checkpoint_config(options_of(monkeypatch), None)
    assert default.offload_bytes == CheckpointConfig.offload_bytes == 256 << 10


def test_a_bound_below_a_page_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "main", lambda url, opts: None)
    res = CliRunner().invoke(app, ["runner", "--snapshot-bytes", "10"])
    assert res.exit_code == 2 and "--snapshot-bytes" in res.output
    res = CliRunner().invoke(app, ["runner", "--segment-bytes", "0"])
    assert res.exit_code == 2 and "--segment-bytes" in res.output
