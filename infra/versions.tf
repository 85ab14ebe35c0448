terraform {
  # 1.5: `check` blocks and the provider-5 resource set this module is written against.
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region

  # Tags on every resource, so the bill and the console show what belongs to this deployment.
  default_tags {
    tags = merge({ "wallaroo:deployment" = var.name }, var.tags)
  }
}
