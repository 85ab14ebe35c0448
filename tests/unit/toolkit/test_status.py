"""wallaroo.control.status: what `wallaroo status` and `wallaroo deploy` say about versions
from the runners' heartbeats: the version each runner runs, and who refused a deploy."""

from __future__ import annotations

import asyncio
import dataclasses

from wallaroo.control.status import PartitionView, Rollout, _stage_summary, rollout, running_versions
from wallaroo.core.names import MEMBERS_BUCKET
from wallaroo.core.observe import StageLag
from wallaroo.core.wire import AppReport, Heartbeat, Manifest, PartitionReport

V2 = Manifest("wc", "wc", "v2", "3.11", "3.1", 1, [], [], [], created=2.0)


def beat(runner: str, versions: dict[str, str], errors: dict[str, str] | None = None,
         refused: dict[str, str] | None = None) -> Heartbeat:
    apps = {slug: AppReport(version, 0, {}, {}) for slug, version in versions.items()}
    return Heartbeat(runner, 1, "host", 0.0, 0.0, 0, apps, errors or {}, refused or {})


class Members:
    """Just the membership bucket: all `rollout` reads."""

    def __init__(self, *beats: Heartbeat) -> None:
        self.beats = {b.id: b.to_wire() for b in beats}

    async def kv_keys(self, bucket: str) -> list[str]:
        assert bucket == MEMBERS_BUCKET
        return list(self.beats)

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        return self.beats.get(key)


def test_rollout_counts_only_refusals_of_this_very_deploy() -> None:
    """r1 refused an earlier deploy of v2 (another key, say): for this deploy of v2 it is
    still switching, not failed; r2 refused this one; r0 runs it."""
    earlier = dataclasses.replace(V2, created=1.0)
    nats = Members(
        beat("r0", {"wc": "v2"}),
        beat("r1", {"wc": "v1"}, {"wc": "v2: SignatureError: old"}, {"wc": earlier.deploy_id}),
        beat("r2", {"wc": "v1"}, {"wc": "v2: SignatureError: new"}, {"wc": V2.deploy_id}),
    )

    state = asyncio.run(rollout(nats, V2))  # type: ignore[arg-type]

    assert (state.ready, state.failed, state.waiting) == (
        ["r0"], {"r2": "v2: SignatureError: new"}, ["r1"])


def test_a_redeploy_of_the_running_version_is_ready_once_the_runner_took_it() -> None:
    """Until r0 has read this deploy of v2 it still runs the earlier deploy of v2: waiting."""
    earlier = dataclasses.replace(V2, created=1.0)

    def state(deploy_id: str) -> Rollout:
        report = AppReport("v2", 0, {}, {}, deploy_id=deploy_id)
        nats = Members(Heartbeat("r0", 1, "h", 0.0, 0.0, 0, {"wc": report}, {}))
        return asyncio.run(rollout(nats, V2))  # type: ignore[arg-type]

    assert state(earlier.deploy_id).waiting == ["r0"]
    assert state(V2.deploy_id).ready == ["r0"]


def test_a_refused_redeploy_of_the_running_version_is_a_failure_not_a_success() -> None:
    nats = Members(beat("r0", {"wc": "v2"}, {"wc": "v2: SignatureError: x"}, {"wc": V2.deploy_id}))

    state = asyncio.run(rollout(nats, V2))  # type: ignore[arg-type]

    assert state.failed == {"r0": "v2: SignatureError: x"} and state.ready == []


def test_running_versions_counts_the_runners_on_each() -> None:
    beats = [beat("r0", {"wc": "old"}), beat("r1", {"wc": "new"}), beat("r2", {"wc": "old"}),
             beat("r3", {"other": "x"})]

    assert running_versions("wc", beats) == "new (1), old (2)"
    assert running_versions("nope", beats) == "-"


def test_a_refused_version_is_not_shown_as_running() -> None:
    """r0 refused `new` and kept running `old`: status says so, not what was deployed."""
    beats = [beat("r0", {"wc": "old"}, {"wc": "new: SignatureError: unsigned"})]

    assert running_versions("wc", beats) == "old (1)"


def test_problems_name_each_refusing_runner_and_why_and_a_timeout() -> None:
    state = Rollout("v2", ready=["r2"], failed={"r1": "v2: SignatureError: signed with key X",
                                                "r0": "v2: VersionMismatchError: Python"},
                    waiting=["r4", "r3"])

    assert state.problems() == [
        "runner r0 refused v2: VersionMismatchError: Python",
        "runner r1 refused v2: SignatureError: signed with key X",
        "rollout timed out: runner(s) r3, r4 still not running v2",
    ]
    assert not state.ok and not state.done


def test_a_clean_rollout_has_no_problems() -> None:
    state = Rollout("v2", ready=["r0", "r1"], failed={}, waiting=[])

    assert state.ok and state.problems() == []


def test_a_stage_row_adds_up_its_partitions() -> None:
    """status's default view: one row per stage, its partitions' numbers added up; the
    runners that run them named once; busy is the longest-running batch."""
    def report(records: int, dead: int, busy: float) -> PartitionReport:
        return PartitionReport(commits=1, records=records, dead=dead, restores=0, committed_seq=1,
                               rate=10.0, msg_rate=1.0, busy_for=busy)

    views = [PartitionView("wc", 1, 0, "r0", "r0", report(5, 1, 0.0), (2, 1)),
             PartitionView("wc", 1, 1, "r1", "r1", report(7, 0, 12.0), (0, 0)),
             PartitionView("wc", 1, 2, "r1", "r1", report(1, 2, 0.0), None),
             PartitionView("wc", 1, 3, "-", "-", None, None)]
    lag = StageLag("wc", 1, "count", pending=2, ack_pending=1, partitions=4, missing=2)

    assert _stage_summary(views, lag) == ["r0, r1", "2", "1", "13", "30", "3", "12s"]
