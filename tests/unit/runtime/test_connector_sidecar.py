"""wallaroo_runtime.connectors.sidecar: the FileSink's commit survives a crash at any point
between its two durable steps, and a restart cuts an uncommitted append away."""

from __future__ import annotations

from pathlib import Path

from wallaroo_runtime.connectors import sidecar
from wallaroo_runtime.connectors.sidecar import FileCommit


def test_commit_round_trips_through_the_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    assert sidecar.load(path) is None
    commit = FileCommit(12, 7, {"s1.0": 3})
    sidecar.save(path, commit)
    assert sidecar.load(path) == commit
    assert sidecar.sidecar_path(path).name == "out.txt.commit"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt.commit"]  # no temp file left


def test_a_restart_cuts_an_append_that_was_never_committed(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    commit = sidecar.recover(path)  # a new sink: empty file, nothing delivered
    assert commit == FileCommit()
    offset = sidecar.append(path, b"a\nb\n")
    commit = commit.advance(offset, 1, "s1.0:1:0")
    sidecar.save(path, commit)
    sidecar.append(path, b"c\nhalf a li")  # crash: appended, commit not written

    resumed = sidecar.recover(path)
    assert resumed == commit == FileCommit(4, 1, {"s1.0": 1})
    assert path.read_bytes() == b"a\nb\n"


def test_without_a_sidecar_existing_bytes_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.txt"
    path.parent.mkdir()
    path.write_bytes(b"header\n")
    assert sidecar.recover(path) == FileCommit(offset=7)
    assert path.read_bytes() == b"header\n"


def test_a_file_shortened_outside_the_sink_is_appended_to_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_bytes(b"abc")
    sidecar.save(path, FileCommit(10, 4))
    assert sidecar.recover(path) == FileCommit(3, 4)


def test_delivered_means_at_or_below_the_commit_seq_or_a_re_published_commit() -> None:
    commit = FileCommit(0, 0).advance(10, 5, "s1.0:8:0")
    assert commit.delivered(5, "anything") and commit.delivered(4, "s1.1:1:0")
    assert not commit.delivered(6, "s1.1:1:0")
    assert commit.delivered(9, "s1.0:8:0")  # re-published after the dedup window: new seq, same commit
    assert commit.advance(20, 3, "x") == FileCommit(20, 5, {"s1.0": 8})  # seq never goes back
