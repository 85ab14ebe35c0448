"""Which errors say NATS is unreachable or leaderless (the leader then keeps partitions with
their owners) and which are bugs or bad requests (they must not freeze the assignment)."""

import nats.errors  # noqa: TID251 - the error classes under test
import nats.js.errors as jserr  # noqa: TID251
import pytest

from wallaroo.nats import unavailable


@pytest.mark.parametrize("err", [
    TimeoutError(), nats.errors.TimeoutError(), nats.errors.NoRespondersError(),
    jserr.ServiceUnavailableError(), jserr.NoStreamResponseError(),
    nats.errors.ConnectionClosedError(), ConnectionRefusedError(),
])
def test_nats_being_away_is_unavailable(err: BaseException) -> None:
    assert unavailable(err)


@pytest.mark.parametrize("err", [
    jserr.BadRequestError(), jserr.NotFoundError(), ValueError("bug"), KeyError("x"),
])
def test_bugs_and_bad_requests_are_not(err: BaseException) -> None:
    assert not unavailable(err)
