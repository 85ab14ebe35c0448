#!/bin/sh
# Fetches a NATS node's secrets from SSM and issues its certificate (wallaroo-secrets.service
# runs it as root at every boot). Rendered by infra/nats.tf with terraform's templatefile();
# the dollar-brace placeholders are its variables.
set -eu
${venv}/bin/wallaroo infra fetch --path ${ssm_path}/nats --dest ${secrets_dir} --region ${region}
# The public address too, from the instance metadata (IMDSv2), so operators who connect through
# nats_public_urls verify the host. None when the node has no public IP.
token=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
public_ip=$(curl -sf -m 5 -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/public-ipv4 || true)
${venv}/bin/wallaroo infra node-cert --ca-dir ${secrets_dir} --ip ${private_ip} $${public_ip:+--ip "$public_ip"} --out ${secrets_dir}
%{ if autoscaler }
${venv}/bin/wallaroo infra fetch --path ${ssm_path}/autoscaler --dest ${autoscaler_dir} --region ${region}
%{ endif }
