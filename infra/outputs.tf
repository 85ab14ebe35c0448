output "nats_urls" {
  description = "Client URL of every NATS server (private addresses: reachable inside the VPC); TLS, verified with the cluster CA."
  value       = local.nats_urls
}

output "nats_public_urls" {
  description = "Client URL of every NATS server on its public address; reachable from operator_cidrs only, TLS verified with the cluster CA."
  # Each node's certificate names its public IP too (read from the instance metadata at boot).
  value = [for n in aws_instance.nats : "tls://${n.public_ip}:${local.nats_ports.client}"]
}

output "runner_nats_url" {
  description = "The NATS URL the runners are given (node 0)."
  value       = local.runner_nats_url
}

output "state_store_url" {
  description = "Where runners keep snapshots (their WALLAROO_STATE_STORE)."
  value       = local.state_store_url
}

output "state_bucket" {
  description = "Name of the S3 bucket holding the state."
  value       = aws_s3_bucket.state.bucket
}

output "runner_asg_name" {
  description = "Name of the runners' autoscaling group (the autoscaler's --asg-group)."
  value       = aws_autoscaling_group.runners.name
}

output "vpc_id" {
  description = "ID of the VPC everything runs in."
  value       = aws_vpc.main.id
}

output "ssm_path" {
  description = "SSM Parameter Store path of the cluster's secrets (`wallaroo infra secrets --name <name>` fills it before apply); only the path is in the terraform state, never a value."
  value       = local.ssm_path
}
