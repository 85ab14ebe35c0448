"""wallaroo_runtime.autoscale.policy: each row is an observation and the decision it must give."""

from __future__ import annotations

import math

import pytest

from wallaroo.core.observe import StageLag
from wallaroo_runtime.autoscale.policy import Observation, Policy, decide

NOW = 1000.0
ZERO_OK = Policy(min_runners=0, idle_to_zero=60.0)


def seen(lag: int = 0, rate: float = 0.0, rates: tuple[float, ...] = (), runners: int = 1,
         desired: int | None = None, idle_since: float | None = None) -> Observation:
    """An observation with `lag` records waiting in one stage and `rate` records/s arriving."""
    lags = (StageLag("app", 0, "split", lag),)
    return Observation(runners, runners if desired is None else desired, lags, rate, rates,
                       idle_since)


def quiet(runners: int, idle_for: float) -> Observation:
    return seen(runners=runners, idle_since=NOW - idle_for)


CASES = [
    # -- steady state
    pytest.param(seen(rate=4000, rates=(2500, 2500), runners=2), Policy(), (), 2, 2, "no change from 2",
                 id="steady-state-no-change"),
    # -- up
    pytest.param(seen(lag=300_000, rate=1000, rates=(2000,)), Policy(), (), 6, 6,
                 "lag 300000 + input 1000/s needs 11000/s; 2000/s per runner -> 6 runners",
                 id="lag-burst-scales-up-immediately"),
    pytest.param(seen(lag=300_000, rate=1000, rates=(2000,)), Policy(max_runners=4), (), 4, 4,
                 "-> 6 runners, kept within [1, 4] -> 4", id="scale-up-capped-at-max"),
    pytest.param(seen(rate=8000, rates=(2000,)), Policy(up_stabilization=20),
                 [(NOW - 15, 1), (NOW - 10, 4), (NOW - 5, 1)], 1, 4,
                 "held at 1 by the 20s up window: min of 4", id="up-window-holds-a-spike"),
    pytest.param(seen(rate=8000, rates=(2000,)), Policy(up_stabilization=20),
                 [(NOW - 25, 1), (NOW - 10, 4), (NOW - 5, 4)], 4, 4, "-> 4 runners",
                 id="up-window-releases-a-sustained-rise"),
    # -- down
    pytest.param(seen(rate=2000, rates=(2000,) * 4, runners=4), Policy(),
                 [(NOW - 20, 4), (NOW - 10, 3)], 4, 1, "held at 4 by the 30s down window: max of 3",
                 id="scale-down-held-by-down-window"),
    pytest.param(seen(rate=2000, rates=(2000,) * 4, runners=4), Policy(),
                 [(NOW - 40, 4), (NOW - 10, 3)], 3, 1, "held at 3", id="scale-down-steps-as-window-slides"),
    pytest.param(seen(rate=2000, rates=(2000,) * 4, runners=4), Policy(),
                 [(NOW - 40, 4), (NOW - 31, 3)], 1, 1, "-> 1 runners",
                 id="scale-down-released-after-window"),
    pytest.param(seen(rate=2000, rates=(2000,) * 4, runners=4), Policy(),
                 [(NOW - 25, 4), (NOW - 20, 1), (NOW - 15, 4), (NOW - 10, 1), (NOW - 5, 4)], 4, 1,
                 "held at 4", id="flapping-recommendations-hold-desired"),
    pytest.param(seen(rate=2000, rates=(2000,) * 4, runners=10), Policy(), [(NOW - 5, 10)], 8, 1,
                 "kept within [1, 8] -> 8", id="desired-above-max-brought-back-to-max"),
    # -- zero
    pytest.param(quiet(1, idle_for=60), ZERO_OK, (), 0, 0, "idle 60s >= idle_to_zero 60s -> 0 runners",
                 id="idle-to-zero-after-idle_to_zero"),
    pytest.param(quiet(1, idle_for=59), ZERO_OK, (), 1, 1, "-> 0 runners, kept within [1, 8] -> 1",
                 id="idle-not-long-enough-keeps-one"),
    pytest.param(quiet(1, idle_for=3600), Policy(), (), 1, 1, "no change from 1",
                 id="idle-never-below-min-runners"),
    pytest.param(quiet(3, idle_for=60), ZERO_OK, [(NOW - 5, 3)], 0, 0, "idle 60s",
                 id="idle-to-zero-is-its-own-window"),
    pytest.param(quiet(0, idle_for=5), ZERO_OK, (), 0, 0, "stay at 0 until lag arrives",
                 id="at-zero-without-lag-stays-at-zero"),
    pytest.param(seen(lag=1, runners=0, idle_since=None), ZERO_OK, (), 1, 1,
                 "lag 1 + input 0/s needs 0.033/s", id="wake-from-zero-on-any-lag"),
    pytest.param(seen(lag=5, runners=0), Policy(min_runners=0, idle_to_zero=60, up_stabilization=60),
                 [(NOW - 10, 0), (NOW - 5, 0)], 1, 1, "work waiting (lag 5, input 0/s) at 0 runners: wake 1",
                 id="wake-on-lag-ignores-up-window"),
    pytest.param(seen(lag=10, runners=0, idle_since=NOW - 3600), ZERO_OK, (), 1, 1, "lag 10",
                 id="lag-wins-over-a-stale-idle-since"),
    # -- rates
    pytest.param(seen(rate=50_000), Policy(assumed_runner_rate=20000), (), 3, 3,
                 "20000/s per runner (assumed, none measured) -> 3 runners", id="no-rate-uses-assumed"),
    pytest.param(seen(rate=50_000, rates=(0.0, 0.0), runners=2), Policy(assumed_runner_rate=20000), (), 3, 3,
                 "(assumed",
                 id="zero-rates-count-as-unmeasured"),
    pytest.param(seen(rate=12_000, rates=(0.0, 4000.0), runners=2), Policy(), (), 3, 3,
                 "4000/s per runner -> 3", id="mean-ignores-idle-runners"),
    pytest.param(seen(rate=6000, rates=(2000.0,)), Policy(), (), 3, 3, "-> 3 runners",
                 id="exact-multiple-does-not-round-up"),
]


@pytest.mark.parametrize(("obs", "policy", "history", "desired", "recommended", "why"), CASES)
def test_decision_table(obs: Observation, policy: Policy, history: list[tuple[float, int]],
                        desired: int, recommended: int, why: str) -> None:
    decision = decide(obs, policy, NOW, history)

    assert (decision.desired, decision.recommended) == (desired, recommended), decision.reason
    assert decision.change == desired - obs.desired
    assert why in decision.reason


def test_flapping_input_does_not_flap_the_decision() -> None:
    """A loop over 2 minutes of input alternating 8000/s and 2000/s every 5 s."""
    history: list[tuple[float, int]] = []
    desired, seen_desired = 1, []
    for tick in range(24):
        now = tick * 5.0
        obs = seen(rate=8000 if tick % 2 == 0 else 2000, rates=(2000,), runners=desired)
        decision = decide(obs, Policy(), now, history)
        history.append((now, decision.recommended))
        desired = decision.desired
        seen_desired.append(desired)

    assert seen_desired == [4] * 24  # up once at the first peak, then held by the down window


def test_total_lag_sums_every_stage() -> None:
    lags = (StageLag("a", 0, "split", 10), StageLag("a", 1, "count", 5), StageLag("b", 0, "x", 1))

    assert Observation(1, 1, lags, 0.0, (), None).total_lag == 16


@pytest.mark.parametrize(("kwargs", "message"), [
    pytest.param({"min_runners": -1}, "min_runners=-1 is negative", id="negative-min"),
    pytest.param({"max_runners": 0}, "max_runners=0 is below 1", id="zero-max"),
    pytest.param({"min_runners": 3, "max_runners": 2}, "max_runners=2 is below 3", id="min-above-max"),
    pytest.param({"target_catchup": 0}, "target_catchup=0 must be > 0", id="zero-catchup"),
    pytest.param({"target_catchup": math.nan}, "target_catchup=nan", id="nan-catchup"),
    pytest.param({"up_stabilization": -1}, "up_stabilization=-1 must be >= 0", id="negative-up-window"),
    pytest.param({"down_stabilization": -1}, "down_stabilization=-1", id="negative-down-window"),
    pytest.param({"min_runners": 0, "idle_to_zero": -5}, "idle_to_zero=-5 must be >= 0",
                 id="negative-idle"),
    pytest.param({"min_runners": 0}, "min_runners=0 needs idle_to_zero", id="zero-min-without-idle"),
    pytest.param({"idle_to_zero": 60}, "idle_to_zero=60 has no effect with min_runners=1",
                 id="idle-without-zero-min"),
    pytest.param({"assumed_runner_rate": 0}, "assumed_runner_rate=0 must be > 0", id="zero-assumed-rate"),
])
def test_invalid_policies_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match="invalid autoscale Policy") as err:
        Policy(**kwargs)  # type: ignore[arg-type]

    assert message in str(err.value)


def test_invalid_observation_raises() -> None:
    with pytest.raises(ValueError, match="runners=-1"):
        seen(runners=-1)
