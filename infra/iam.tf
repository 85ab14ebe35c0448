data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# --- runners: their state prefix in the bucket, nothing else ---------------------------------

resource "aws_iam_role" "runner" {
  name_prefix        = "${var.name}-runner-"
  description        = "Wallaroo runners: read and write partition state under the state prefix"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "runner_state" {
  statement {
    sid       = "StateObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.state.arn}/${var.state_prefix}/*"]
  }

  # Restores list the snapshots of a partition; listing is a bucket action, so the condition is
  # what keeps it inside the prefix.
  statement {
    sid       = "ListStatePrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.state.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.state_prefix}/*"]
    }
  }
}

resource "aws_iam_role_policy" "runner_state" {
  name   = "wallaroo-state"
  role   = aws_iam_role.runner.id
  policy = data.aws_iam_policy_document.runner_state.json
}

resource "aws_iam_instance_profile" "runner" {
  name_prefix = "${var.name}-runner-"
  role        = aws_iam_role.runner.name
}

# --- autoscaler (NATS node 0): resize the runner group, nothing else -------------------------

resource "aws_iam_role" "autoscaler" {
  name_prefix        = "${var.name}-autoscaler-"
  description        = "Wallaroo autoscaler: set the desired capacity of the runner group"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "autoscaler" {
  statement {
    sid       = "ResizeRunnerGroup"
    actions   = ["autoscaling:SetDesiredCapacity"]
    resources = [aws_autoscaling_group.runners.arn]
  }

  # Describe* calls do not support resource-level permissions: "*" is the only accepted value.
  statement {
    sid       = "ReadGroups"
    actions   = ["autoscaling:DescribeAutoScalingGroups"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "autoscaler" {
  name   = "wallaroo-autoscaler"
  role   = aws_iam_role.autoscaler.id
  policy = data.aws_iam_policy_document.autoscaler.json
}

resource "aws_iam_instance_profile" "autoscaler" {
  name_prefix = "${var.name}-autoscaler-"
  role        = aws_iam_role.autoscaler.name
}

# --- secrets: each role reads its own SSM path, nobody reads operator/ -----------------------
# `wallaroo infra secrets` puts SecureStrings under local.ssm_path; terraform creates none of
# them (their values would sit in its state). The ARNs name the path and everything below it;
# "*" for the account, since looking it up would need the AWS API at plan time. The
# SecureStrings are encrypted with the AWS-managed aws/ssm key, whose key policy already lets
# principals of the account decrypt through SSM (kms:ViaService): no kms statement is needed,
# and none would widen it beyond the paths below.

data "aws_iam_policy_document" "runner_secrets" {
  statement {
    sid       = "ReadRunnerSecrets"
    actions   = ["ssm:GetParametersByPath", "ssm:GetParameter", "ssm:GetParameters"]
    resources = ["arn:aws:ssm:${var.region}:*:parameter${local.ssm_path}/runner", "arn:aws:ssm:${var.region}:*:parameter${local.ssm_path}/runner/*"]
  }
}

data "aws_iam_policy_document" "nats_secrets" {
  statement {
    sid       = "ReadNatsSecrets"
    actions   = ["ssm:GetParametersByPath", "ssm:GetParameter", "ssm:GetParameters"]
    resources = ["arn:aws:ssm:${var.region}:*:parameter${local.ssm_path}/nats", "arn:aws:ssm:${var.region}:*:parameter${local.ssm_path}/nats/*"]
  }
}

data "aws_iam_policy_document" "autoscaler_secrets" {
  statement {
    sid       = "ReadAutoscalerSecrets"
    actions   = ["ssm:GetParametersByPath", "ssm:GetParameter", "ssm:GetParameters"]
    resources = ["arn:aws:ssm:${var.region}:*:parameter${local.ssm_path}/autoscaler", "arn:aws:ssm:${var.region}:*:parameter${local.ssm_path}/autoscaler/*"]
  }
}

resource "aws_iam_role_policy" "runner_secrets" {
  name   = "wallaroo-secrets"
  role   = aws_iam_role.runner.id
  policy = data.aws_iam_policy_document.runner_secrets.json
}

# NATS nodes 1..n: their secrets (the CA to issue their certificate with, auth.conf), nothing else.
resource "aws_iam_role" "nats" {
  name_prefix        = "${var.name}-nats-"
  description        = "Wallaroo NATS nodes: read the nats secrets in SSM"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy" "nats_secrets" {
  name   = "wallaroo-secrets"
  role   = aws_iam_role.nats.id
  policy = data.aws_iam_policy_document.nats_secrets.json
}

resource "aws_iam_instance_profile" "nats" {
  name_prefix = "${var.name}-nats-"
  role        = aws_iam_role.nats.name
}

# Node 0 is a NATS node too, and runs the autoscaler: both paths.
resource "aws_iam_role_policy" "autoscaler_nats_secrets" {
  name   = "wallaroo-nats-secrets"
  role   = aws_iam_role.autoscaler.id
  policy = data.aws_iam_policy_document.nats_secrets.json
}

resource "aws_iam_role_policy" "autoscaler_secrets" {
  name   = "wallaroo-autoscaler-secrets"
  role   = aws_iam_role.autoscaler.id
  policy = data.aws_iam_policy_document.autoscaler_secrets.json
}
