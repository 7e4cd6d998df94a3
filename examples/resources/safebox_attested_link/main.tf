# safebox_attested_link: two boxes, the customer's data box and the model-weights box, each
# proving what it runs to the other before any data crosses. The link's key exists only in the
# two agents; the workload in each box uses it through the box's own socket, and no file in
# Terraform's state can open what one side seals for the other.
#
# On the local backend the attestation root is simulated (generated on this machine), so it
# must be allowed explicitly; every result then says simulated = true.

terraform {
  required_providers {
    safebox = { source = "safebots/safebox" }
  }
}

provider "safebox" {
  attestation {
    allow_simulated = true
  }
}

# One image for both boxes here; in practice the data box and the weights box run their own.
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
}

resource "safebox_enclave" "data" {
  image_id = safebox_image.app.id
}

resource "safebox_enclave" "weights" {
  image_id  = safebox_image.app.id
  cpu_count = 1
}

# Each side must attest to PCR0 to PCR2 as it attested them when it was deployed (the default
# of a_expected_pcrs and b_expected_pcrs); a box running anything else, the development image
# included, fails the link closed.
resource "safebox_attested_link" "data_to_weights" {
  a_enclave_id = safebox_enclave.data.id
  b_enclave_id = safebox_enclave.weights.id
}

output "link_status" {
  value = safebox_attested_link.data_to_weights.status
}
