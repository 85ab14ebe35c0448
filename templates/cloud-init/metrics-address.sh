#!/bin/sh
# Run once by cloud-init on a runner VM: the runner's /metrics is to listen on this VM's private
# address (the security group admits the metrics port from inside the VPC only), which only the
# instance metadata knows (IMDSv2: the instances require tokens). Once is enough: a VPC instance
# keeps its primary private address for life. Without the file the runner's metrics stay on
# loopback, and `wallaroo status` shows 127.0.0.1 for it.
set -eu
token=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
ip=$(curl -sf -m 5 -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/local-ipv4)
printf 'WALLAROO_METRICS_HOST=%s\n' "$ip" > ${env_file}
