"""The AWS backend: runners are the instances of an EC2 autoscaling group (ASG).

The only module that imports boto3 (ruff's banned-api holds the line): it is an optional
dependency, `pip install 'wallaroo[aws]'`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import boto3  # noqa: TID251 - this module is the owner of the boto3 import

from wallaroo.core.errors import WallarooError

log = logging.getLogger(__name__)


class AsgNotFoundError(WallarooError, LookupError):
    """The autoscaling group the backend was pointed at does not exist in that region."""

    def __init__(self, group: str, region: str) -> None:
        self.group, self.region = group, region
        super().__init__(
            f"no EC2 autoscaling group named {group!r} in region {region}: check the group name "
            "and region the autoscaler was given, or create the runner group first "
            "(the terraform in infra/)"
        )


class AwsAsgBackend:
    """Scale the runner pool by setting the desired capacity of an autoscaling group.

    `endpoint_url` points boto3 elsewhere than AWS (a moto server in tests); `client` replaces
    the boto3 `autoscaling` client altogether. Credentials come from boto3's usual chain.
    """

    name = "aws-asg"

    def __init__(self, group: str, *, region: str = "us-east-1", endpoint_url: str | None = None,
                 client: object | None = None) -> None:
        self.group, self.region = group, region
        # boto3 clients are generated at runtime and untyped: Any is the honest type.
        self._client: Any = client if client is not None else boto3.client(
            "autoscaling", region_name=region, endpoint_url=endpoint_url)

    async def current(self) -> int:
        """The group's DesiredCapacity: what AWS is converging to, not the instances up now."""
        group = await asyncio.to_thread(self._describe)  # boto3 blocks: off the event loop
        return int(group["DesiredCapacity"])

    async def set_desired(self, n: int) -> None:
        """Set DesiredCapacity to `n`, clamped to the group's [MinSize, MaxSize] with a warning:
        AWS rejects values outside them, and the group's bounds win over the policy's."""
        await asyncio.to_thread(self._set_desired, n)

    def _set_desired(self, n: int) -> None:
        group = self._describe()
        low, high = int(group["MinSize"]), int(group["MaxSize"])
        capacity = min(max(n, low), high)
        if capacity != n:
            log.warning("autoscaling group %s allows %d..%d runners: asked for %d, setting %d",
                        self.group, low, high, n, capacity)
        # The policy's stabilization windows already pace changes; the ASG cooldown would
        # only delay a wake from zero.
        self._client.set_desired_capacity(
            AutoScalingGroupName=self.group, DesiredCapacity=capacity, HonorCooldown=False)

    def _describe(self) -> dict[str, Any]:
        reply = self._client.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])
        groups: list[dict[str, Any]] = reply["AutoScalingGroups"]
        if not groups:
            raise AsgNotFoundError(self.group, self.region)
        return groups[0]
