"""When the leader keeps owners in the assignment: only after NATS itself failed it, only
lately, and only for a bounded spell (a clock is injected by patching time.monotonic)."""

import nats.errors  # noqa: TID251 - an error of NATS being away
import pytest

from wallaroo_runtime import runner as runner_mod
from wallaroo_runtime.cluster import ClusterConfig
from wallaroo_runtime.runner import TROUBLE_GRACE, Runner


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(runner_mod.time, "monotonic", c)
    return c


def test_trouble_keeps_owners_lately_and_for_a_bounded_spell(clock: Clock) -> None:
    r = Runner("nats://127.0.0.1:1", "r0", cluster_cfg=ClusterConfig(member_ttl=1.0))
    assert not r.nats_troubled
    r._troubled(ValueError("a bug"))  # counted, but no reason to distrust heartbeats
    assert r.tick_failures == 1 and not r.nats_troubled
    r._troubled(nats.errors.TimeoutError())
    assert r.nats_troubled
    clock.now += 2.5  # two TTLs without a failure: the spell is over
    assert not r.nats_troubled
    for _ in range(TROUBLE_GRACE * 2):  # a failure every half TTL, for twice the grace
        r._troubled(nats.errors.NoRespondersError())
        clock.now += 0.5
    assert not r.nats_troubled  # a spell that lasts gives up keeping the owners
