# The safebox-pair module on the local backend: a data box and a model box, each attested,
# and an attested link between them. Apply with:
#   SAFEBOX_EXAMPLE=examples/pair scripts/quickstart
#
# The inputs are stand-ins (scripts/example-inputs); the keys are test keys whose private
# halves are public in this repository. Replace both for anything real.

terraform {
  required_providers {
    safebox = { source = "safebots/safebox" }
  }
}

provider "safebox" {
  attestation {
    allow_simulated = true # the local backend's software root: development only
  }
}

locals {
  kernel = { source = "inputs/bzImage", sha256 = "cce87d150de6df842bccbd469d3465da6a9549b0e373ef58ef5a835b6cdbca29" }
  init   = { name = "init", source = "inputs/init.tar", sha256 = "d18e2d1211b4e2f2402425b296e5e535e5f85ae269f771bda8eae2bba5f0f5d7" }
}

module "pair" {
  source = "../../modules/safebox-pair"

  name = "hospital"

  data_box = {
    kernel  = local.kernel
    cmdline = "console=ttyS0 role=data"
    layers = [
      local.init,
      { name = "app", source = "inputs/app.bin", sha256 = "c222de2c4d38aa10466ab08daef4c37e988d8f79f2a9c02c8daf1704716a3e61", destination = "/app/app.bin" },
    ]
  }

  model_box = {
    kernel  = local.kernel
    cmdline = "console=ttyS0 role=model"
    layers = [
      local.init,
      { name = "weights", source = "inputs/weights.bin", sha256 = "f35fbbc4b551e003faa40a511938180a9e8e493d7da2131eb307e7b76029745e", destination = "/model/weights.bin" },
    ]
  }

  signers = [
    { id = "auditor-a", role = "auditor", public_key_pem = file("${path.module}/keys/auditor-a.pub.pem") },
    { id = "auditor-b", role = "auditor", public_key_pem = file("${path.module}/keys/auditor-b.pub.pem") },
  ]
  rules = [
    { action = "enclave.deploy", threshold = 2, roles = ["auditor"] },
    { action = "link.create", threshold = 1, roles = ["auditor"] },
  ]
}

output "link_binding_sha256" {
  value = module.pair.link_binding_sha256
}

output "data_pcr0" {
  value = module.pair.data_image_measurements.pcr0
}

output "model_pcr0" {
  value = module.pair.model_image_measurements.pcr0
}
