# The attestable-image pipeline on the local backend: one "uki" image built from Debian packages
# and the static safebox-agent, a development box that auditors log in to over SSH, and the
# sealed production box, each booting the very disk bytes that would become its AMI (under QEMU,
# OVMF and a software TPM here; as an EC2 instance with NitroTPM on the aws backend).
#
# Make the inputs first, from the repository root:
#
#   scripts/attestable-ami-inputs
#
# which downloads the packages with `apt-get download` (nothing is installed), builds the agent
# statically, and writes inputs/ and attestable-ami.auto.tfvars (the inputs' SHA-256 digests)
# here. Then `terraform init && terraform apply`. Each box takes a few seconds to boot under KVM,
# tens of seconds without it.
#
# The keys in keys/ are test keys whose private halves are public in this repository. Put your
# own SSH public key in keys/operator.pub (or set operator_public_key) to log in to the dev box.

terraform {
  required_providers {
    safebox = { source = "safebots/safebox" }
  }
}

provider "safebox" {
  backend   = "local"
  state_dir = ".safebox"
  attestation {
    # The local backend's boxes sign their NitroTPM documents with a software root generated on
    # this machine (their PCRs are the ones the firmware really measured into the software TPM).
    # It shows the flow end to end and proves nothing about hardware. Never for real data.
    allow_simulated = true
  }
}

variable "boot_stub" {
  description = "systemd-boot-efi's EFI stub (scripts/attestable-ami-inputs pins it)."
  type        = object({ source = string, sha256 = string })
}

variable "kernel" {
  description = "The kernel of Debian's linux-image-amd64."
  type        = object({ source = string, sha256 = string })
}

variable "init" {
  description = "The init layer: busybox, /init, the kernel modules QEMU and EC2 need, sshd's libraries."
  type        = object({ source = string, sha256 = string })
}

variable "agent" {
  description = "safebox-agent, statically linked."
  type        = object({ source = string, sha256 = string })
}

variable "sshd" {
  description = "OpenSSH's sshd, for the development image only."
  type        = object({ source = string, sha256 = string })
}

variable "cmdline" {
  description = "The kernel command line, part of the UKI (and so of PCR4)."
  type        = string
}

variable "operator_public_key" {
  description = "The SSH public key that may log in to the development box."
  type        = string
  default     = null
}

# The policy auditors would govern this pipeline with. This example applies in one go, so the
# image and boxes do not name it; docs/guides/governance.md walks through the governed flow.
resource "safebox_policy" "gov" {
  name = "attestable-ami"

  signer {
    id             = "auditor-a"
    role           = "auditor"
    public_key_pem = file("${path.module}/keys/auditor-a.pub.pem")
  }
  signer {
    id             = "auditor-b"
    role           = "auditor"
    public_key_pem = file("${path.module}/keys/auditor-b.pub.pem")
  }

  rule {
    action    = "image.publish"
    threshold = 2
    roles     = ["auditor"]
  }
  rule {
    action    = "enclave.deploy"
    threshold = 2
    roles     = ["auditor"]
  }
}

# Two bootable disks: the development UKI's initrd ends with the SSH layer, the production UKI
# is the same with that archive removed. Their NitroTPM PCR4, PCR7 and PCR12 are known at plan.
resource "safebox_image" "app" {
  name              = "attestable-app"
  format            = "uki"
  source_date_epoch = 1700000000

  boot_stub {
    source = var.boot_stub.source
    sha256 = var.boot_stub.sha256
  }
  kernel {
    source = var.kernel.source
    sha256 = var.kernel.sha256
  }
  cmdline = var.cmdline

  layer {
    name   = "init"
    source = var.init.source
    sha256 = var.init.sha256
  }
  layer {
    name        = "agent"
    source      = var.agent.source
    sha256      = var.agent.sha256
    destination = "/usr/bin/safebox-agent"
  }

  dev_access {
    ssh_authorized_keys = [coalesce(var.operator_public_key, file("${path.module}/keys/operator.pub"))]
    sshd {
      source = var.sshd.source
      sha256 = var.sshd.sha256
    }
  }
}

# The development box: auditors log in over ssh_endpoint and inspect what runs.
resource "safebox_enclave" "dev" {
  image_id   = safebox_image.app.id
  variant    = "dev"
  cpu_count  = 1
  memory_mib = 512
}

# The production box: no SSH; trusted only once its NitroTPM document shows the planned PCRs.
resource "safebox_enclave" "prod" {
  image_id   = safebox_image.app.id
  cpu_count  = 1
  memory_mib = 512
  expected_pcrs = {
    "4"  = safebox_image.app.prod_measurements.pcr4
    "7"  = safebox_image.app.prod_measurements.pcr7
    "12" = safebox_image.app.prod_measurements.pcr12
  }
}

output "prod_measurements" {
  description = "What auditors approve: the production disk's digest and NitroTPM PCRs, known at plan."
  value       = safebox_image.app.prod_measurements
}

output "dev_ssh_endpoint" {
  description = "Log in with: ssh -p PORT root@127.0.0.1 (PORT from this HOST:PORT)."
  value       = safebox_enclave.dev.ssh_endpoint
}

output "prod_endpoint" {
  description = "Where the production box's agent answers (GET /attestation?nonce=...)."
  value       = safebox_enclave.prod.endpoint
}

output "prod_attested_pcrs" {
  description = "The PCRs the production box's verified document carried."
  value       = { for i in ["4", "7", "12"] : i => safebox_enclave.prod.attestation.pcrs[i] }
}
