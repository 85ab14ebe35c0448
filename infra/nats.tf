locals {
  nats_cluster_name      = var.name
  nats_secrets_dir       = "${local.secrets_dir}/nats"
  autoscaler_secrets_dir = "${local.secrets_dir}/autoscaler"

  nats_user_data = [
    for i, ip in local.nats_ips : templatefile("${local.templates}/cloud-init/nats.yaml", {
      autoscaler     = i == 0
      install_script = base64encode(local.install_script)
      nats_conf = base64encode(templatefile("${local.templates}/nats-server.conf", {
        server_name  = "${var.name}-nats-${i}"
        private_ip   = ip
        client_port  = local.nats_ports.client
        cluster_port = local.nats_ports.cluster
        http_port    = local.nats_ports.http
        store_dir    = "/var/lib/nats/jetstream"
        cluster_name = local.nats_cluster_name
        # The other members only: a node that lists itself wastes a route attempt.
        routes = jsonencode([for j, peer in local.nats_ips : "nats-route://${peer}:${local.nats_ports.cluster}" if j != i])
      }))
      nats_unit = base64encode(templatefile("${local.templates}/nats-server.service", {
        venv         = local.venv
        config       = "/etc/nats/nats-server.conf"
        secrets_dir  = local.nats_secrets_dir
        memory_limit = var.nats_memory_limit
      }))
      secrets_script = base64encode(templatefile("${local.templates}/cloud-init/nats-secrets.sh", {
        venv           = local.venv
        ssm_path       = local.ssm_path
        region         = var.region
        private_ip     = ip
        secrets_dir    = local.nats_secrets_dir
        autoscaler     = i == 0
        autoscaler_dir = local.autoscaler_secrets_dir
      }))
      secrets_unit = base64encode(templatefile("${local.templates}/wallaroo-secrets.service", {
        region  = var.region
        command = "/usr/local/sbin/wallaroo-nats-secrets"
      }))
      autoscaler_unit = base64encode(templatefile("${local.templates}/wallaroo-autoscaler.service", {
        venv           = local.venv
        region         = var.region
        asg_group      = local.asg_name
        min_runners    = var.runners_min
        max_runners    = var.runners_max
        target_catchup = var.autoscaler_target_catchup
        down_window    = var.autoscaler_down_window
        idle_to_zero   = var.autoscaler_idle_to_zero == null ? "" : " --idle-to-zero ${var.autoscaler_idle_to_zero}"
        # Its own node's address: nats-server listens on the private IP, not on loopback.
        nats_url    = local.nats_urls[i]
        secrets_dir = local.autoscaler_secrets_dir
        # /metrics on the node's private address: the security group admits it from the VPC
        metrics_host = ip
        metrics_port = local.metrics_port
      }))
    })
  ]
}

resource "aws_instance" "nats" {
  count = var.nats_nodes

  ami                         = var.ami_id
  instance_type               = var.nats_instance_type
  subnet_id                   = aws_subnet.main[count.index % length(local.azs)].id
  private_ip                  = local.nats_ips[count.index]
  associate_public_ip_address = true
  vpc_security_group_ids      = [aws_security_group.nats.id]
  key_name                    = var.ssh_key_name
  # Only node 0 runs the autoscaler, so only node 0 may resize the runner group (and read the
  # autoscaler's secrets); every node may read the nats secrets.
  iam_instance_profile = count.index == 0 ? aws_iam_instance_profile.autoscaler.name : aws_iam_instance_profile.nats.name
  user_data            = local.nats_user_data[count.index]

  # The JetStream store lives on the root volume: durability against losing a VM comes from
  # 3-way stream replication and the S3 snapshots, not from keeping one node's disk.
  root_block_device {
    volume_type = "gp3"
    volume_size = var.nats_volume_gb
    encrypted   = true
  }

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  tags = { Name = "${var.name}-nats-${count.index}" }

  lifecycle {
    # Replacing every node at once (new AMI, new config) would drop the JetStream quorum and
    # its data. Roll nodes one at a time instead: see README "Changing the cluster".
    ignore_changes = [ami, user_data]
  }

  # At boot the node installs packages (needs the internet route), reads its secrets and node 0
  # starts the autoscaler (both need their permissions in place).
  depends_on = [
    aws_route.internet, aws_route_table_association.main, aws_iam_role_policy.autoscaler,
    aws_iam_role_policy.nats_secrets, aws_iam_role_policy.autoscaler_nats_secrets,
    aws_iam_role_policy.autoscaler_secrets,
  ]
}
