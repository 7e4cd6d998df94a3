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
# boxes; changing the policy itself needs both auditors and the security officer.
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
  rule {
    action    = "policy.update"
    threshold = 3
    roles     = ["auditor", "security"]
  }
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
