# Safebox quickstart on the local backend: everything runs on this machine, no cloud account.
# Apply it with `scripts/quickstart` from the repository root.
#
# The keys in keys/ are test keys whose private halves are public in this repository: they
# show the shape of a deployment. Replace them with your auditors' own public keys.

terraform {
  required_providers {
    safebox = { source = "safebots/safebox" }
  }
}

provider "safebox" {
  backend   = "local"
  state_dir = ".safebox"
}

# Two auditors must approve every deployment of a box; any one may approve a link between
# boxes. (A policy.update rule would also govern changes to the policy itself; see
# docs/guides/governance.md.)
resource "safebox_policy" "gov" {
  name = "customer-data"

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
  signer {
    id             = "security-officer"
    role           = "security"
    public_key_pem = file("${path.module}/keys/auditor-c.pub.pem")
  }

  rule {
    action    = "enclave.deploy"
    threshold = 2
    roles     = ["auditor"]
  }
  rule {
    action    = "link.create"
    threshold = 1
    roles     = ["auditor"]
  }
}

# The two-image pipeline: a development image with SSH, and the sealed production image.
# The inputs are stand-ins (see scripts/example-inputs); pin real ones in production.
resource "safebox_image" "app" {
  name              = "data-box"
  source_date_epoch = 1700000000

  kernel {
    source = "inputs/bzImage"
    sha256 = "cce87d150de6df842bccbd469d3465da6a9549b0e373ef58ef5a835b6cdbca29"
  }
  cmdline = "console=ttyS0 reboot=k panic=30"

  layer {
    name   = "init"
    source = "inputs/init.tar"
    sha256 = "d18e2d1211b4e2f2402425b296e5e535e5f85ae269f771bda8eae2bba5f0f5d7"
  }
  layer {
    name        = "app"
    source      = "inputs/app.bin"
    sha256      = "c222de2c4d38aa10466ab08daef4c37e988d8f79f2a9c02c8daf1704716a3e61"
    destination = "/app/app.bin"
  }

  dev_access {
    ssh_authorized_keys = [file("${path.module}/keys/operator.pub")]
    sshd {
      source = "inputs/sshd"
      sha256 = "0da3e7588346a224ded09ff63af65b42738104be6450e56b95a3f7e766ec4cff"
    }
  }
}

output "image_measurements" {
  description = "What auditors approve: the production image's digest and PCRs, known at plan time."
  value       = safebox_image.app.prod_measurements
}

output "image_manifest_sha256" {
  value = safebox_image.app.manifest_sha256
}

output "policy_id" {
  value = safebox_policy.gov.id
}

output "policy_digest" {
  description = "What auditors compare: the SHA-256 of the canonical policy document."
  value       = safebox_policy.gov.digest
}

output "policy_version" {
  value = safebox_policy.gov.version
}
