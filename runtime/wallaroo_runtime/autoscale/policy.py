"""The autoscaler's decision: observation + policy + clock -> how many runners. Pure, no I/O.

The control loop observes (consumer lag per stage, input rate, per-runner rates), calls
`decide`, keeps `(now, decision.recommended)` in its history, and hands `decision.desired` to a
backend. Everything here is data, so every rule is a row in a unit-test table.

>>> obs = Observation(runners=1, desired=1, lags=(StageLag("wc", 0, "split", 12000),),
...                   input_rate=5000.0, runner_rates=(2700.0,), idle_since=None)
>>> decide(obs, Policy(), now=100.0).desired
2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from wallaroo.core.observe import StageLag

# A needed/per-runner ratio like 2.0000000001 is float noise, not a reason for a third runner.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Policy:
    """Bounds and timing of the autoscaler. Times are in seconds.

    `target_catchup`: how fast a backlog should drain; `up_stabilization` / `down_stabilization`:
    how long a higher / lower recommendation must persist before it is acted on (like the
    Kubernetes HPA windows); `idle_to_zero`: seconds without lag and input after which the
    group may go to 0 runners. Scale to zero needs both `min_runners=0` and `idle_to_zero`,
    and each without the other is rejected: it would silently not do what it says.
    `assumed_runner_rate`: messages/s per runner until a runner rate has been measured.
    Rates and lags are in JetStream messages (what consumer lag counts; a message carries a
    batch of records): 1000 messages/s is about what one runner commits on word count.
    """

    min_runners: int = 1
    max_runners: int = 8
    target_catchup: float = 30.0
    up_stabilization: float = 0.0
    down_stabilization: float = 30.0
    idle_to_zero: float | None = None
    assumed_runner_rate: float = 1000.0

    def __post_init__(self) -> None:
        problem = _bounds_problem(self) or _timing_problem(self) or _zero_problem(self)
        if problem:
            msg = f"invalid autoscale Policy: {problem}"
            raise ValueError(msg)

    @property
    def allows_zero(self) -> bool:
        """True when the group may go down to 0 runners after `idle_to_zero` idle seconds."""
        return self.min_runners == 0 and self.idle_to_zero is not None

    @property
    def floor(self) -> int:
        """The fewest runners a rate-based decision gives: 0 is reached only through idleness,
        since one quiet tick of a bursty source is not idleness."""
        return max(self.min_runners, 1)


def _bounds_problem(p: Policy) -> str:
    if p.min_runners < 0:
        return f"min_runners={p.min_runners} is negative; use 0 or more"
    if p.max_runners < p.floor:
        return f"max_runners={p.max_runners} is below {p.floor}; use at least max(min_runners, 1)"
    if not p.assumed_runner_rate > 0:  # `not >` also rejects NaN
        return f"assumed_runner_rate={p.assumed_runner_rate} must be > 0 messages/s"
    return ""


def _timing_problem(p: Policy) -> str:
    if not p.target_catchup > 0:
        return f"target_catchup={p.target_catchup} must be > 0 seconds"
    for name in ("up_stabilization", "down_stabilization"):
        if not getattr(p, name) >= 0:
            return f"{name}={getattr(p, name)} must be >= 0 seconds"
    if p.idle_to_zero is not None and not p.idle_to_zero >= 0:
        return f"idle_to_zero={p.idle_to_zero} must be >= 0 seconds, or None to never go to zero"
    return ""


def _zero_problem(p: Policy) -> str:
    if p.min_runners == 0 and p.idle_to_zero is None:
        return ("min_runners=0 needs idle_to_zero (seconds idle before going to 0 runners); "
                "set idle_to_zero, or use min_runners=1")
    if p.min_runners > 0 and p.idle_to_zero is not None:
        return (f"idle_to_zero={p.idle_to_zero} has no effect with min_runners={p.min_runners}; "
                "set min_runners=0 to allow scale to zero, or drop idle_to_zero")
    return ""


@dataclass(frozen=True)
class Observation:
    """What the loop saw at one tick.

    `runners`: live runners now; `desired`: the backend's current desired count;
    `input_rate`: messages/s arriving at the sources; `runner_rates`: messages/s each live runner
    processed recently; `idle_since`: since when there has been no lag and no input (None if
    active now).
    """

    runners: int
    desired: int
    lags: tuple[StageLag, ...]
    input_rate: float
    runner_rates: tuple[float, ...]
    idle_since: float | None

    def __post_init__(self) -> None:
        if self.runners < 0 or self.desired < 0 or not self.input_rate >= 0:
            msg = (f"invalid Observation: runners={self.runners}, desired={self.desired}, "
                   f"input_rate={self.input_rate}; all must be >= 0")
            raise ValueError(msg)

    @property
    def total_lag(self) -> int:
        """Records waiting in all stages together."""
        return sum(s.lag for s in self.lags)


@dataclass(frozen=True)
class Decision:
    """What to do. `recommended` is this tick's raw answer (keep it in the history);
    `desired` is what to set after the stabilization windows; `change` is
    `desired - observation.desired` (> 0 add runners, < 0 remove, 0 leave the backend alone);
    `reason` explains the numbers, for logs."""

    desired: int
    recommended: int
    reason: str
    change: int


def decide(obs: Observation, policy: Policy, now: float,
           history: Sequence[tuple[float, int]] = ()) -> Decision:
    """Decide the runner count. `history` holds earlier `(time, recommended)` pairs; the caller
    keeps it (entries older than both windows can be dropped).

    needed = input_rate + total_lag / target_catchup (messages/s); per runner = mean of the
    measured runner rates > 0, else `assumed_runner_rate`; recommended = ceil(needed /
    per runner) within [max(min_runners, 1), max_runners]. Going up takes the min of the
    recommendations in the last `up_stabilization` s, going down the max of those in the last
    `down_stabilization` s (this one included). Idle for `idle_to_zero` s with
    `min_runners=0` -> 0 runners; any lag wakes at least 1 runner whatever the windows say.
    """
    if _stays_at_zero(obs, policy, now):
        return Decision(0, 0, _zero_reason(obs, policy, now), -obs.desired)
    recommended, why = _recommend(obs, policy)
    desired, held = _stabilize(obs.desired, recommended, policy, now, history)
    desired, bounded = _bound(desired, obs, policy)
    reason = "; ".join(part for part in (why, held, bounded) if part)
    return Decision(desired, recommended, reason, desired - obs.desired)


def _is_quiet(obs: Observation) -> bool:
    return obs.total_lag == 0 and obs.input_rate == 0


def _stays_at_zero(obs: Observation, policy: Policy, now: float) -> bool:
    if not policy.allows_zero or not _is_quiet(obs):
        return False
    # Already at zero with nothing to do: only lag is a reason to wake a runner.
    return obs.desired == 0 or _idle_for(obs, now) >= _idle_limit(policy)


def _idle_for(obs: Observation, now: float) -> float:
    return -math.inf if obs.idle_since is None else now - obs.idle_since


def _idle_limit(policy: Policy) -> float:
    return math.inf if policy.idle_to_zero is None else policy.idle_to_zero


def _zero_reason(obs: Observation, policy: Policy, now: float) -> str:
    if obs.desired == 0:
        return "at 0 runners with no lag and no input: stay at 0 until lag arrives"
    return (f"idle {_idle_for(obs, now):.0f}s >= idle_to_zero {_idle_limit(policy):g}s "
            "-> 0 runners")


def _recommend(obs: Observation, policy: Policy) -> tuple[int, str]:
    needed = obs.input_rate + obs.total_lag / policy.target_catchup
    measured = [r for r in obs.runner_rates if r > 0]
    per_runner = sum(measured) / len(measured) if measured else policy.assumed_runner_rate
    source = "" if measured else " (assumed, none measured)"
    raw = math.ceil(needed / per_runner - _EPSILON)
    recommended = min(max(raw, policy.floor), policy.max_runners)
    why = (f"lag {obs.total_lag} + input {_rate(obs.input_rate)}/s needs {_rate(needed)}/s; "
           f"{_rate(per_runner)}/s per runner{source} -> {raw} runners")
    if recommended != raw:
        why += f", kept within [{policy.floor}, {policy.max_runners}] -> {recommended}"
    return recommended, why


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def _stabilize(current: int, recommended: int, policy: Policy, now: float,
               history: Sequence[tuple[float, int]]) -> tuple[int, str]:
    if recommended == current:
        return current, f"no change from {current}"
    up = recommended > current
    window = policy.up_stabilization if up else policy.down_stabilization
    recent = [rec for t, rec in history if now - window <= t <= now] + [recommended]
    held = min(recent) if up else max(recent)
    # A window only slows a move, never reverses it: going up never ends below where we are.
    desired = max(current, held) if up else min(current, held)
    if desired == recommended:
        return desired, ""
    rule = "up window: min" if up else "down window: max"
    return desired, f"held at {desired} by the {window:g}s {rule} of {len(recent)} recommendations"


def _bound(desired: int, obs: Observation, policy: Policy) -> tuple[int, str]:
    bounded = min(max(desired, policy.floor), policy.max_runners)
    if bounded == desired:
        return desired, ""
    if desired == 0:
        return bounded, (f"work waiting (lag {obs.total_lag}, input {_rate(obs.input_rate)}/s) "
                         f"at 0 runners: wake {bounded}")
    return bounded, f"kept within [{policy.floor}, {policy.max_runners}] -> {bounded}"
