# safebox_policy: an M-of-N governance policy with signers of all three supported key types.

terraform {
  required_providers {
    safebox = { source = "safebots/safebox" }
  }
}

provider "safebox" {}

resource "safebox_policy" "example" {
  name       = "model-weights"
  expires_at = "2030-01-01T00:00:00Z"

  signer {
    id             = "bank-auditor" # ed25519
    role           = "auditor"
    public_key_pem = file("${path.module}/keys/auditor-a.pub.pem")
  }
  signer {
    id             = "external-auditor" # ECDSA P-256
    role           = "auditor"
    public_key_pem = file("${path.module}/keys/auditor-b.pub.pem")
  }
  signer {
    id             = "ciso" # ECDSA P-384
    role           = "security"
    public_key_pem = file("${path.module}/keys/auditor-c.pub.pem")
  }

  rule {
    action    = "image.publish"
    threshold = 1
    roles     = ["auditor"]
  }
  rule {
    action    = "enclave.deploy"
    threshold = 2
    roles     = ["auditor", "security"]
  }
}

output "document" {
  value = safebox_policy.example.document
}
