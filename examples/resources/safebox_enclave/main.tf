# safebox_enclave: a box booted from the production image, trusted only after its
# attestation document verifies against the image's measurements.
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

resource "safebox_image" "app" {
  name              = "data-box"
  source_date_epoch = 1700000000

  kernel {
    source = "inputs/bzImage"
    sha256 = "cce87d150de6df842bccbd469d3465da6a9549b0e373ef58ef5a835b6cdbca29"
  }
  cmdline = "console=ttyS0 reboot=k panic=30"

  # The first layer is the boot ramdisk (PCR1); later layers are measured by PCR2.
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
    ssh_authorized_keys = [file("keys/operator.pub")]
    sshd {
      source = "inputs/sshd"
      sha256 = "0da3e7588346a224ded09ff63af65b42738104be6450e56b95a3f7e766ec4cff"
    }
  }
}

resource "safebox_enclave" "box" {
  image_id      = safebox_image.app.id
  expected_pcrs = { "0" = safebox_image.app.prod_measurements.pcr0 }
  cpu_count     = 2
  memory_mib    = 1024
}

output "endpoint" {
  value = safebox_enclave.box.endpoint
}

output "attested_pcr0" {
  value = safebox_enclave.box.attestation.pcrs["0"]
}
