"""wallaroo_runtime.connectors.parts (and the part names of framing): a PartsSink's part is
named from its output's msg id alone, appears whole or not at all, is never written twice,
and what a crash left half-written in `_staging` is cleared at the next start."""

from __future__ import annotations

import asyncio
from pathlib import Path

from wallaroo_runtime.connectors import parts
from wallaroo_runtime.connectors.framing import PARTS_STAGING, is_part_of, part_name

SLUG = "word_job"


def test_a_part_is_named_from_the_msg_id_never_the_stream_seq() -> None:
    name = part_name(SLUG, 7, "s2.3:41:1", ".txt")
    assert name == "part-word_job-s2p3-000000000041-1.txt"
    # A re-publish after the dedup window: a new seq, the same part.
    assert part_name(SLUG, 9000, "s2.3:41:1", ".txt") == name
    # Commit numbers sort as numbers within a partition.
    assert part_name(SLUG, 1, "s1.0:9:0", "") < part_name(SLUG, 2, "s1.0:10:0", "")
    assert part_name(SLUG, 5, "odd-id", ".out") == "part-word_job-seq000000000005.out"


def test_parts_of_an_app_are_told_from_other_apps_parts() -> None:
    assert is_part_of(SLUG, "part-word_job-s1p0-000000000001-0.txt")
    assert is_part_of(SLUG, "part-word_job-s1p0-000000000001-0.txt.1a2b3c4d")  # staged
    assert not is_part_of(SLUG, "part-word_job_2-s1p0-000000000001-0.txt")
    assert not is_part_of(SLUG, "_SUCCESS")


def test_a_part_is_staged_then_renamed_whole(tmp_path: Path) -> None:
    name = part_name(SLUG, 1, "s1.0:1:0", ".txt")
    staged = parts.stage(tmp_path, name, b"a\nb\n")
    # Between the steps a reader sees no part, only a name it skips (`_staging`).
    assert staged.parent == tmp_path / PARTS_STAGING and staged.read_bytes() == b"a\nb\n"
    assert [p.name for p in tmp_path.iterdir()] == [PARTS_STAGING]
    parts.commit(staged, tmp_path / name)
    assert (tmp_path / name).read_bytes() == b"a\nb\n"
    assert list((tmp_path / PARTS_STAGING).iterdir()) == []


def test_a_part_already_there_is_not_written_again(tmp_path: Path) -> None:
    name = part_name(SLUG, 1, "s1.0:1:0", ".txt")
    assert parts.write_part(tmp_path, name, b"first\n")
    mtime = (tmp_path / name).stat().st_mtime_ns
    assert not parts.write_part(tmp_path, name, b"first\n")
    assert (tmp_path / name).stat().st_mtime_ns == mtime
    assert list((tmp_path / PARTS_STAGING).iterdir()) == []


def test_a_start_clears_this_apps_staged_leftovers_and_lists_its_parts(tmp_path: Path) -> None:
    done = part_name(SLUG, 1, "s1.0:1:0", ".txt")
    parts.write_part(tmp_path, done, b"a\n")
    half = parts.stage(tmp_path, part_name(SLUG, 2, "s1.0:2:0", ".txt"), b"half a li")
    other_app = parts.stage(tmp_path, part_name("other", 1, "s1.0:1:0", ".txt"), b"x\n")
    (tmp_path / "part-other-s1p0-000000000001-0.txt").write_bytes(b"x\n")
    (tmp_path / "_SUCCESS").write_bytes(b"")

    found = asyncio.run(parts.LocalParts(tmp_path).existing(SLUG))
    assert found == {done}
    assert not half.exists()  # the crash's half-written part is gone, never renamed
    assert other_app.exists()  # another app may be writing to this target right now


def test_a_start_makes_a_missing_target(tmp_path: Path) -> None:
    target = tmp_path / "out" / "job"
    assert asyncio.run(parts.LocalParts(target).existing(SLUG)) == set()
    assert target.is_dir()
