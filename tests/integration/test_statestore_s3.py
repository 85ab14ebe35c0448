"""wallaroo_runtime.statestore.S3Store against moto's real HTTP server on loopback: keys
round-trip under the store's prefix; an S3 outage is retried a bounded number of times, then
named; the store works again once S3 is back; 5xx answers are retried, 4xx are not."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3  # noqa: TID251 - the test builds the bucket the store is checked against
import botocore.exceptions  # noqa: TID251 - the test checks a 4xx surfaces as botocore's error
import pytest

from conftest import BUCKET, REGION, Moto
from wallaroo_runtime.statestore import BucketNotFoundError, S3Store, StateStoreUnavailableError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def store_at(url: str, **kw: Any) -> S3Store:
    return S3Store(BUCKET, "runs/7", endpoint_url=url, region=REGION, **kw)


def put_once(store: S3Store) -> None:
    async def body() -> None:
        try:
            await store.put("k", b"v")
        finally:
            await store.close()

    asyncio.run(body())


def test_put_get_list_delete(moto: Moto) -> None:
    async def body() -> None:
        store = store_at(moto.url)
        try:
            await store.put("snapshots/app/0/1/000000000002.snap", b"two")
            await store.put("snapshots/app/0/1/000000000001.snap", b"\x00one")
            await store.put("snapshots/app/0/10/000000000001.snap", b"other partition")

            assert await store.get("snapshots/app/0/1/000000000001.snap") == b"\x00one"
            assert await store.get("snapshots/app/0/1/missing") is None
            assert await store.list("snapshots/app/0/1/") == [
                "snapshots/app/0/1/000000000001.snap", "snapshots/app/0/1/000000000002.snap"]
            assert len(await store.list("")) == 3

            await store.delete("snapshots/app/0/1/000000000001.snap")
            await store.delete("snapshots/app/0/1/000000000001.snap")  # missing: no error
            assert await store.list("snapshots/app/0/1/") == ["snapshots/app/0/1/000000000002.snap"]
        finally:
            await store.close()

    asyncio.run(body())
    # The prefix is where the objects really are: another runner's S3 tooling sees them there.
    s3: Any = boto3.client("s3", region_name=REGION, endpoint_url=moto.url)
    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "runs/7/snapshots/app/0/1/000000000002.snap", "runs/7/snapshots/app/0/10/000000000001.snap"]


def test_list_pages_through_more_than_a_thousand_keys(moto: Moto) -> None:
    async def body() -> list[str]:
        store = store_at(moto.url)
        try:
            await asyncio.gather(*(store.put(f"many/{i:05d}", b"") for i in range(1005)))
            return await store.list("many/")
        finally:
            await store.close()

    assert asyncio.run(body()) == [f"many/{i:05d}" for i in range(1005)]


def test_a_missing_bucket_is_named(moto: Moto) -> None:
    store = S3Store("no-such-bucket", "", endpoint_url=moto.url, region=REGION)

    with pytest.raises(BucketNotFoundError, match="s3://no-such-bucket/ at http://127.0.0.1"):
        put_once(store)


def test_an_outage_is_retried_then_named_and_the_store_recovers(moto: Moto) -> None:
    async def body() -> tuple[float, StateStoreUnavailableError]:
        store = store_at(moto.url, attempts=4, backoff=0.05, max_backoff=0.1, timeout=2.0)
        try:
            await store.put("k", b"before")
            moto.stop()
            started = time.monotonic()
            with pytest.raises(StateStoreUnavailableError) as err:
                await store.put("k", b"during")
            took = time.monotonic() - started
            moto.start()  # same port; moto's globals still hold the bucket and "k"
            await store.put("k", b"after")
            assert await store.get("k") == b"after"
            return took, err.value
        finally:
            await store.close()

    took, err = asyncio.run(body())
    assert took < 5.0
    assert err.attempts == 4 and err.operation == "put"
    assert f"s3://{BUCKET}/runs/7 at {moto.url} failed put 4 times" in str(err)
    assert "WALLAROO_S3_ENDPOINT" in str(err)


class Answer(BaseHTTPRequestHandler):
    """Answers every request with the server's fixed status and S3 error code, counting them."""

    protocol_version = "HTTP/1.1"  # so it answers botocore's "Expect: 100-continue"

    def do_PUT(self) -> None:
        server: Canned = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server.count += 1
        body = f"<Error><Code>{server.code}</Code><Message>canned</Message></Error>".encode()
        self.send_response(server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Keep test output clean."""


class Canned(ThreadingHTTPServer):
    def __init__(self, status: int, code: str) -> None:
        super().__init__(("127.0.0.1", 0), Answer)
        self.status, self.code, self.count = status, code, 0


@pytest.fixture
def canned(request: pytest.FixtureRequest, aws_env: None) -> Iterator[Canned]:
    server = Canned(*request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("canned", [(503, "SlowDown")], indirect=True)
def test_5xx_answers_are_retried_up_to_the_bound(canned: Canned) -> None:
    store = store_at(f"http://127.0.0.1:{canned.server_address[1]}", attempts=3, backoff=0.01,
                     attempt_timeout=10.0)

    with pytest.raises(StateStoreUnavailableError, match="failed put 3 times"):
        put_once(store)

    assert canned.count == 3  # botocore's own retries are off: the bound is the store's


@pytest.mark.parametrize("canned", [(403, "AccessDenied")], indirect=True)
def test_4xx_answers_are_not_retried(canned: Canned) -> None:
    store = store_at(f"http://127.0.0.1:{canned.server_address[1]}", attempts=3, backoff=0.01,
                     attempt_timeout=10.0)

    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        put_once(store)

    assert canned.count == 1


def test_a_server_that_never_answers_is_bounded_by_the_attempt_timeout(aws_env: None) -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        store = store_at(f"http://127.0.0.1:{silent.getsockname()[1]}", attempts=2, backoff=0.01,
                         attempt_timeout=0.3)
        started = time.monotonic()

        with pytest.raises(StateStoreUnavailableError, match="failed put 2 times"):
            put_once(store)

    assert 0.6 <= time.monotonic() - started < 10.0
