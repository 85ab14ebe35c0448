"""The autoscaler: observe lag and rates -> pure `decide` (policy.py) -> act via a backend
(backends.py: the `Backend` protocol and static; aws.py: an EC2 autoscaling group).

aws.py is not imported here: it needs boto3, which only the `aws` extra installs."""

from wallaroo.core.observe import StageLag
from wallaroo_runtime.autoscale.backends import Backend, StaticBackend
from wallaroo_runtime.autoscale.policy import Decision, Observation, Policy, decide

__all__ = ["Backend", "Decision", "Observation", "Policy", "StageLag", "StaticBackend", "decide"]
