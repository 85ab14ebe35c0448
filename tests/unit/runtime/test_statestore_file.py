"""wallaroo_runtime.statestore: the file store keeps keys as files, writes atomically, refuses
keys that leave its root; open_store reads file:// and s3:// URLs and names bad ones."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from wallaroo.core.errors import WallarooError
from wallaroo_runtime.statestore import BadStoreUrlError, FileStore, S3Store, open_store


def test_put_get_list_delete(tmp_path: Path) -> None:
    async def body() -> None:
        store = FileStore(tmp_path)
        await store.put("snapshots/app/0/1/b", b"two")
        await store.put("snapshots/app/0/1/a", b"one")
        await store.put("snapshots/app/0/10/a", b"other partition")
        await store.put("segments/app/0/1/a", b"seg")

        assert await store.get("snapshots/app/0/1/a") == b"one"
        assert await store.get("snapshots/app/0/1/missing") is None
        assert await store.list("snapshots/app/0/1/") == ["snapshots/app/0/1/a", "snapshots/app/0/1/b"]
        assert await store.list("snapshots/app/0/1") == [
            "snapshots/app/0/1/a", "snapshots/app/0/1/b", "snapshots/app/0/10/a"]
        assert await store.list("") == sorted([
            "segments/app/0/1/a", "snapshots/app/0/1/a", "snapshots/app/0/1/b", "snapshots/app/0/10/a"])
        assert await store.list("nothing/here/") == []

        await store.delete("snapshots/app/0/1/a")
        await store.delete("snapshots/app/0/1/a")  # deleting a missing key is fine
        assert await store.get("snapshots/app/0/1/a") is None
        assert await store.list("snapshots/app/0/1/") == ["snapshots/app/0/1/b"]
        await store.close()

    asyncio.run(body())


def test_put_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    async def body() -> None:
        store = FileStore(tmp_path)
        await asyncio.gather(*(store.put("k/v", bytes([i]) * 1000) for i in range(20)))
        await store.put("k/v", b"final")

        assert await store.get("k/v") == b"final"
        assert await store.list("") == ["k/v"]

    asyncio.run(body())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["k", "v"]


def test_a_failed_write_keeps_the_old_bytes_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)
    asyncio.run(store.put("k", b"old"))

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        asyncio.run(store.put("k", b"new"))

    assert (tmp_path / "k").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_temp_files_of_a_crashed_writer_are_not_keys(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".tmp-x.1234").write_bytes(b"half")
    store = FileStore(tmp_path)

    assert asyncio.run(store.list("d/")) == []


def test_sweep_removes_the_untouched_temp_files_under_the_prefix_only(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    asyncio.run(store.put("d/k", b"kept"))
    asyncio.run(store.put("e/k", b"kept"))
    stale, fresh, elsewhere = (tmp_path / "d" / ".tmp-k.1", tmp_path / "d" / ".tmp-k.2",
                               tmp_path / "e" / ".tmp-k.3")
    for f in (stale, fresh, elsewhere):
        f.write_bytes(b"half")
    hour_ago = stale.stat().st_mtime - 3600
    for f in (stale, elsewhere):
        os.utime(f, (hour_ago, hour_ago))

    assert asyncio.run(store.sweep("d/", older_than=600)) == ["d/.tmp-k.1"]
    assert not stale.exists() and fresh.exists() and elsewhere.exists()
    assert asyncio.run(store.sweep("d/", older_than=0)) == ["d/.tmp-k.2"]
    assert asyncio.run(store.sweep("d/", older_than=0)) == []
    assert asyncio.run(store.list("")) == ["d/k", "e/k"]


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd", "", "a//b", "a/.hidden", "a/"])
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path / "root")

    with pytest.raises(ValueError, match="relative path of names"):
        asyncio.run(store.put(key, b"x"))
    with pytest.raises(ValueError, match="relative path of names"):
        asyncio.run(store.get(key))
    with pytest.raises(ValueError, match="relative path of names"):
        asyncio.run(store.delete(key))
    assert not (tmp_path / "root").exists() and not (tmp_path / "escape").exists()


def test_list_refuses_prefixes_that_leave_the_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="relative path of names"):
        asyncio.run(FileStore(tmp_path).list("../"))


def test_open_store_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_store(f"file://{tmp_path}/state")
    monkeypatch.chdir(tmp_path)
    relative = open_store("file://rel/state")

    assert isinstance(absolute, FileStore) and absolute.root == tmp_path / "state"
    assert isinstance(relative, FileStore) and relative.root == Path("rel/state")
    asyncio.run(relative.put("k", b"v"))
    assert (tmp_path / "rel" / "state" / "k").read_bytes() == b"v"


def test_open_store_s3_urls_take_the_endpoint_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WALLAROO_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    aws = open_store("s3://bucket/some/prefix/")
    monkeypatch.setenv("WALLAROO_S3_ENDPOINT", "http://127.0.0.1:9000")
    local = open_store("s3://bucket")

    assert isinstance(aws, S3Store) and isinstance(local, S3Store)
    assert (aws.bucket, aws.prefix, aws.endpoint_url) == ("bucket", "some/prefix", None)
    assert aws.region == "eu-west-1"
    assert (local.bucket, local.prefix, local.endpoint_url) == ("bucket", "", "http://127.0.0.1:9000")


@pytest.mark.parametrize(("url", "why"), [
    ("/plain/path", "scheme ''"),
    ("gs://bucket/x", "scheme 'gs'"),
    ("file://", "names no directory"),
    ("s3:///prefix", "names no bucket"),
    ("s3://bucket/p?versioned=1", "query or fragment"),
])
def test_open_store_names_a_bad_url_and_the_accepted_forms(url: str, why: str) -> None:
    with pytest.raises(BadStoreUrlError) as err:
        open_store(url)

    assert isinstance(err.value, WallarooError) and isinstance(err.value, ValueError)
    assert repr(url) in str(err.value) and why in str(err.value)
    assert "file:///absolute/dir" in str(err.value) and "s3://bucket/prefix" in str(err.value)
