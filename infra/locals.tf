locals {
  azs          = var.azs != null ? var.azs : ["${var.region}a", "${var.region}b", "${var.region}c"]
  subnet_cidrs = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, i)]

  # Fixed addresses, computed rather than assigned by AWS, so every node's config can name all
  # the others as routes before any of them exists. Node i sits in AZ i mod #AZs; hosts from
  # .10 up stay clear of the addresses AWS reserves at the start of each subnet.
  nats_ips = [
    for i in range(var.nats_nodes) :
    cidrhost(local.subnet_cidrs[i % length(local.azs)], 10 + floor(i / length(local.azs)))
  ]
  # tls://: clients must verify the node's certificate (cluster CA, IP SAN) before they talk.
  nats_urls  = [for ip in local.nats_ips : "tls://${ip}:${local.nats_ports.client}"]
  nats_ports = { client = 4222, cluster = 6222, http = 8222 }
  # Prometheus /metrics of the runners and of the autoscaler (on NATS node 0), scraped from
  # inside the VPC: network.tf's two metrics rules open this port (spelled there as a number).
  metrics_port = 9464

  # Runners take one URL (see README "Limits"); the client learns the other nodes from it.
  runner_nats_url = local.nats_urls[0]

  asg_name = "${var.name}-runners"
  # The variable when set, so plans show the runners' full user data before the bucket exists.
  state_bucket    = coalesce(var.state_bucket_name, aws_s3_bucket.state.bucket)
  state_store_url = "s3://${local.state_bucket}/${var.state_prefix}"

  # Where the software lives on every VM: one venv holds wallaroo, boto3 and nats-server.
  venv         = "/opt/wallaroo"
  pip_packages = concat([var.wallaroo_package], var.extra_pip_packages)
  # Streams and KV buckets replicated on 3 nodes: losing one NATS server loses nothing.
  replicas = 3

  templates = "${path.module}/../templates"

  # Secrets reach the VMs through SSM Parameter Store (`wallaroo infra secrets` puts them
  # there), one path per reader: <ssm_path>/runner, /nats, /autoscaler, /operator. Terraform
  # knows the paths only, never the values, so none is in user data or the terraform state.
  ssm_path = "/wallaroo/${var.name}"
  # Where a VM's secrets land at boot (root-only, 0700): wallaroo-secrets.service writes them.
  secrets_dir = "/etc/wallaroo"

  install_script = templatefile("${local.templates}/cloud-init/install-wallaroo.sh", {
    venv         = local.venv
    pip_packages = join(" ", [for p in local.pip_packages : "'${p}'"])
  })
}
