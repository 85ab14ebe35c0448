resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = var.name }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = var.name }
}

# Public subnets with public IPs and no NAT gateway: VMs need outbound access for apt and pip
# at boot, and a NAT gateway per AZ costs more than the runners. Security groups, not the
# subnet, keep inbound traffic out.
resource "aws_subnet" "main" {
  count = length(local.azs)

  vpc_id                  = aws_vpc.main.id
  availability_zone       = local.azs[count.index]
  cidr_block              = local.subnet_cidrs[count.index]
  map_public_ip_on_launch = true

  tags = { Name = "${var.name}-${local.azs[count.index]}" }
}

resource "aws_route_table" "main" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = var.name }
}

resource "aws_route" "internet" {
  route_table_id         = aws_route_table.main.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.main.id
}

resource "aws_route_table_association" "main" {
  count = length(local.azs)

  subnet_id      = aws_subnet.main[count.index].id
  route_table_id = aws_route_table.main.id
}

# --- security groups ------------------------------------------------------------------------
# Standalone rule resources rather than inline blocks: each rule is its own address in the plan,
# and adding an operator CIDR does not rewrite the whole group.

resource "aws_security_group" "nats" {
  name_prefix = "${var.name}-nats-"
  description = "NATS servers: clients from runners and operators, routes between members"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-nats" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "runner" {
  name_prefix = "${var.name}-runner-"
  description = "Wallaroo runners: outbound only (they dial NATS and S3)"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-runner" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "nats_clients_from_runners" {
  security_group_id            = aws_security_group.nats.id
  description                  = "NATS clients: runners"
  ip_protocol                  = "tcp"
  from_port                    = 4222
  to_port                      = 4222
  referenced_security_group_id = aws_security_group.runner.id
}

resource "aws_vpc_security_group_ingress_rule" "nats_clients_from_operators" {
  for_each = toset(var.operator_cidrs)

  security_group_id = aws_security_group.nats.id
  description       = "NATS clients: operators (wallaroo deploy, status, send)"
  ip_protocol       = "tcp"
  from_port         = 4222
  to_port           = 4222
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "nats_routes" {
  security_group_id            = aws_security_group.nats.id
  description                  = "NATS cluster routes: members only"
  ip_protocol                  = "tcp"
  from_port                    = 6222
  to_port                      = 6222
  referenced_security_group_id = aws_security_group.nats.id
}

resource "aws_vpc_security_group_ingress_rule" "nats_monitoring" {
  security_group_id = aws_security_group.nats.id
  description       = "NATS HTTP monitoring: inside the VPC only"
  ip_protocol       = "tcp"
  from_port         = 8222
  to_port           = 8222
  cidr_ipv4         = aws_vpc.main.cidr_block
}

resource "aws_vpc_security_group_ingress_rule" "runner_metrics" {
  security_group_id = aws_security_group.runner.id
  description       = "Prometheus /metrics of the runners: inside the VPC only"
  ip_protocol       = "tcp"
  from_port         = 9464 # local.metrics_port
  to_port           = 9464
  cidr_ipv4         = aws_vpc.main.cidr_block
}

resource "aws_vpc_security_group_ingress_rule" "autoscaler_metrics" {
  security_group_id = aws_security_group.nats.id
  description       = "Prometheus /metrics of the autoscaler (NATS node 0): inside the VPC only"
  ip_protocol       = "tcp"
  from_port         = 9464 # local.metrics_port
  to_port           = 9464
  cidr_ipv4         = aws_vpc.main.cidr_block
}

resource "aws_vpc_security_group_ingress_rule" "nats_ssh" {
  for_each = var.ssh_key_name == null ? toset([]) : toset(var.operator_cidrs)

  security_group_id = aws_security_group.nats.id
  description       = "SSH: operators"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "runner_ssh" {
  for_each = var.ssh_key_name == null ? toset([]) : toset(var.operator_cidrs)

  security_group_id = aws_security_group.runner.id
  description       = "SSH: operators"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

# Outbound anywhere: apt and pip at boot, the S3 and Auto Scaling APIs at run time.
resource "aws_vpc_security_group_egress_rule" "nats_all" {
  security_group_id = aws_security_group.nats.id
  description       = "Outbound: packages, AWS APIs, routes to other members"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "runner_all" {
  security_group_id = aws_security_group.runner.id
  description       = "Outbound: packages, S3, NATS"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}
