# safebox_sealed_key (aws backend): publish the image as two AMIs, then a KMS key that only an
# enclave running the production image can use. `terraform plan` shows the key policy once the
# image exists; administrators can manage the key but never decrypt, and nobody can change its
# policy.
#
# Against AWS: leave aws_endpoint unset and export credentials the usual way (profile, SSO,
# environment). The tests set TF_VAR_aws_endpoint to a local emulator.

terraform {
  required_providers {
    safebox = { source = "safebots/safebox" }
  }
}

variable "aws_endpoint" {
  description = "One endpoint for EC2, EBS and KMS (an emulator or a VPC endpoint); null for AWS itself."
  type        = string
  default     = null
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

provider "safebox" {
  backend = "aws"
  region  = var.region
  endpoints {
    ec2 = var.aws_endpoint
    ebs = var.aws_endpoint
    kms = var.aws_endpoint
  }
}

# The same stand-in inputs as examples/resources/safebox_image.
resource "safebox_image" "app" {
  name              = "data-box"
  source_date_epoch = 1700000000

  kernel {
    source = "../safebox_image/inputs/bzImage"
    sha256 = "cce87d150de6df842bccbd469d3465da6a9549b0e373ef58ef5a835b6cdbca29"
  }
  cmdline = "console=ttyS0 reboot=k panic=30"

  layer {
    name   = "init"
    source = "../safebox_image/inputs/init.tar"
    sha256 = "d18e2d1211b4e2f2402425b296e5e535e5f85ae269f771bda8eae2bba5f0f5d7"
  }
  layer {
    name        = "app"
    source      = "../safebox_image/inputs/app.bin"
    sha256      = "c222de2c4d38aa10466ab08daef4c37e988d8f79f2a9c02c8daf1704716a3e61"
    destination = "/app/app.bin"
  }

  dev_access {
    ssh_authorized_keys = [file("../safebox_image/keys/operator.pub")]
    sshd {
      source = "../safebox_image/inputs/sshd"
      sha256 = "0da3e7588346a224ded09ff63af65b42738104be6450e56b95a3f7e766ec4cff"
    }
  }
}

resource "safebox_sealed_key" "customer_data" {
  name               = "customer-data"
  image_id           = safebox_image.app.id
  bind_pcrs          = [0, 1, 2]
  administrator_arns = ["arn:aws:iam::123456789012:role/KeyAdmin"]
}

output "prod_ami_id" {
  value = safebox_image.app.prod_ami_id
}

output "sealed_key_arn" {
  value = safebox_sealed_key.customer_data.key_arn
}
