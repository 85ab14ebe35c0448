"""wallaroo_runtime.autoscale.aws against moto's real HTTP server on loopback: the backend sets
and reads an autoscaling group's desired capacity, clamps to its bounds, names missing groups."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3  # noqa: TID251 - the test builds the AWS side the backend is checked against
import pytest
from moto.server import ThreadedMotoServer

from wallaroo.local.natsserver import free_port
from wallaroo_runtime.autoscale.aws import AsgNotFoundError, AwsAsgBackend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
REGION = "us-east-1"
GROUP = "wallaroo-runners"


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server on a free loopback port, with dummy credentials so nothing reaches AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # returns once the server accepts connections
    url = f"http://127.0.0.1:{port}"
    # moto keeps its fake AWS in process globals that outlive a server: start each test empty.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).close()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def group(endpoint: str) -> str:
    """An autoscaling group (min 0, max 5, desired 1) from a launch template, made via boto3."""
    ec2: Any = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
    ec2.create_launch_template(LaunchTemplateName="runner",
                               LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.small"})
    asg: Any = boto3.client("autoscaling", region_name=REGION, endpoint_url=endpoint)
    asg.create_auto_scaling_group(AutoScalingGroupName=GROUP, MinSize=0, MaxSize=5, DesiredCapacity=1,
                                  LaunchTemplate={"LaunchTemplateName": "runner", "Version": "$Latest"},
                                  AvailabilityZones=[f"{REGION}a"])
    return GROUP


def test_set_desired_then_current_round_trips(endpoint: str, group: str) -> None:
    backend = AwsAsgBackend(group, region=REGION, endpoint_url=endpoint)
    assert asyncio.run(backend.current()) == 1

    asyncio.run(backend.set_desired(3))
    assert asyncio.run(backend.current()) == 3
    asyncio.run(backend.set_desired(0))
    assert asyncio.run(backend.current()) == 0


def test_set_desired_clamps_to_the_group_max_with_a_warning(
        endpoint: str, group: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = AwsAsgBackend(group, region=REGION, endpoint_url=endpoint)

    with caplog.at_level(logging.WARNING, logger="wallaroo_runtime.autoscale.aws"):
        asyncio.run(backend.set_desired(9))

    assert asyncio.run(backend.current()) == 5
    assert "allows 0..5 runners: asked for 9, setting 5" in caplog.text


def test_a_missing_group_is_named_with_the_fix(endpoint: str, group: str) -> None:
    backend = AwsAsgBackend("no-such-group", region=REGION, endpoint_url=endpoint)

    with pytest.raises(AsgNotFoundError, match="'no-such-group' in region us-east-1") as err:
        asyncio.run(backend.set_desired(2))

    assert "infra/" in str(err.value)
    with pytest.raises(AsgNotFoundError):
        asyncio.run(backend.current())
    assert asyncio.run(AwsAsgBackend(group, region=REGION, endpoint_url=endpoint).current()) == 1  # untouched
