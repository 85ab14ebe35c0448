locals {
  runner_secrets_dir = "${local.secrets_dir}/runner"
  # WALLAROO_METRICS_HOST=<private address>, written by cloud-init at first boot
  runner_metrics_env = "/etc/default/wallaroo-runner"

  # No secret in here: the runner's credentials, CA, deploy public key and state key come from
  # SSM at boot (wallaroo-secrets.service), with the runner role.
  runner_user_data = templatefile("${local.templates}/cloud-init/runner.yaml", {
    install_script = base64encode(local.install_script)
    runner_unit = base64encode(templatefile("${local.templates}/wallaroo-runner.service", {
      venv         = local.venv
      nats_url     = local.runner_nats_url
      state_store  = local.state_store_url
      replicas     = local.replicas
      region       = var.region
      secrets_dir  = local.runner_secrets_dir
      metrics_port = local.metrics_port
      metrics_env  = local.runner_metrics_env
    }))
    metrics_script = base64encode(templatefile("${local.templates}/cloud-init/metrics-address.sh", {
      env_file = local.runner_metrics_env
    }))
    secrets_unit = base64encode(templatefile("${local.templates}/wallaroo-secrets.service", {
      region  = var.region
      command = "${local.venv}/bin/wallaroo infra fetch --path ${local.ssm_path}/runner --dest ${local.runner_secrets_dir} --region ${var.region}"
    }))
  })
}

resource "aws_launch_template" "runner" {
  name_prefix            = "${var.name}-runner-"
  description            = "Wallaroo runner VM"
  image_id               = var.ami_id
  instance_type          = var.runner_instance_type
  key_name               = var.ssh_key_name
  vpc_security_group_ids = [aws_security_group.runner.id]
  user_data              = base64encode(local.runner_user_data)
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.runner.arn
  }

  # IMDSv2 only, one hop: deployed app code on the VM cannot be tricked into leaking the
  # instance credentials through a plain GET.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge({ "wallaroo:deployment" = var.name, Name = "${var.name}-runner" }, var.tags)
  }
}

resource "aws_autoscaling_group" "runners" {
  name                = local.asg_name
  vpc_zone_identifier = aws_subnet.main[*].id
  min_size            = var.runners_min
  max_size            = var.runners_max
  # Only the first apply uses this: afterwards the autoscaler owns desired capacity.
  desired_capacity          = var.runners_min
  health_check_type         = "EC2"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.runner.id
    version = aws_launch_template.runner.latest_version
  }

  # A new launch template version (AMI, package, key) rolls the runners, half at a time:
  # state lives in NATS and S3, so a replaced runner loses nothing.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }

  lifecycle {
    # The autoscaler on NATS node 0 sets desired capacity from queue lag; terraform must not
    # reset it on every apply.
    ignore_changes = [desired_capacity]

    precondition {
      condition     = var.runners_max >= var.runners_min
      error_message = "runners_max must be >= runners_min."
    }

    # The autoscaler refuses --idle-to-zero unless the pool may shrink to zero runners.
    precondition {
      condition     = var.autoscaler_idle_to_zero == null || var.runners_min == 0
      error_message = "autoscaler_idle_to_zero needs runners_min = 0."
    }
  }

  # Runners install packages at boot (the internet route must exist first) and read their
  # secrets (the permission must).
  depends_on = [aws_route.internet, aws_route_table_association.main, aws_iam_role_policy.runner_secrets]
}
