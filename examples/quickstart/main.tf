# Safebox quickstart on the local backend: everything runs on this machine, no cloud account.
# Apply it with `scripts/quickstart` from the repository root.
#
# The full flow: a governance policy, two reproducible images (the customer's data box and the
# model box), a box booted from each and trusted only once its attestation verifies, and an
# attested link over which the two boxes share a key only they hold.
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
  attestation {
    # The local backend attests boxes with a software root generated on this machine: it
    # shows the flow end to end and proves nothing about hardware. Never for real data.
    allow_simulated = true
  }
}

# The governance policy: two auditors would have to approve every deployment of a box that
# names it (policy_id), and any one a link between such boxes. This quickstart applies in one
# go, so its images and boxes do not name it and nothing here waits for approvals; the
# governed flow (plan -out, auditors sign the digests the plan shows, apply that saved plan)
# is walked through in docs/guides/governance.md.
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
resource "safebox_image" "data" {
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

# The model box: the same kernel and init, and the model weights instead of the application.
resource "safebox_image" "model" {
  name              = "model-box"
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
    name        = "weights"
    source      = "inputs/weights.bin"
    sha256      = "f35fbbc4b551e003faa40a511938180a9e8e493d7da2131eb307e7b76029745e"
    destination = "/model/weights.bin"
  }
}

# Each box boots its production image and must attest to exactly its measurements.
resource "safebox_enclave" "data" {
  image_id      = safebox_image.data.id
  expected_pcrs = { "0" = safebox_image.data.prod_measurements.pcr0 }
}

resource "safebox_enclave" "model" {
  image_id      = safebox_image.model.id
  expected_pcrs = { "0" = safebox_image.model.prod_measurements.pcr0 }
}

# Each box proves what it runs to the other before a key is shared between them.
resource "safebox_attested_link" "data_to_model" {
  a_enclave_id = safebox_enclave.data.id
  b_enclave_id = safebox_enclave.model.id
}

output "image_measurements" {
  description = "What auditors approve: the production image's digest and PCRs, known at plan time."
  value       = safebox_image.data.prod_measurements
}

output "image_manifest_sha256" {
  value = safebox_image.data.manifest_sha256
}

output "link_binding_sha256" {
  description = "Binds both boxes' attestation documents and keys; both boxes report it."
  value       = safebox_attested_link.data_to_model.binding_sha256
}

output "data_box_endpoint" {
  value = safebox_enclave.data.endpoint
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
