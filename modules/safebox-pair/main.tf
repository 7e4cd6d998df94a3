# A pair of attested perimeters: the customer's data box and the model-weights box, each
# booted from a reproducible production image, and an attested link between them.

locals {
  boxes     = { data = var.data_box, model = var.model_box }
  policy_id = var.governed ? safebox_policy.this.id : null
  # The PCRs that measure a box's image, by the image's format.
  image_pcrs = { eif = ["0", "1", "2"], uki = ["4", "7", "12"] }
}

resource "safebox_policy" "this" {
  name = "${var.name}-governance"

  dynamic "signer" {
    for_each = var.signers
    content {
      id             = signer.value.id
      role           = signer.value.role
      public_key_pem = signer.value.public_key_pem
    }
  }

  dynamic "rule" {
    for_each = var.rules
    content {
      action    = rule.value.action
      threshold = rule.value.threshold
      roles     = rule.value.roles
    }
  }
}

resource "safebox_image" "box" {
  for_each = local.boxes

  name              = "${var.name}-${each.key}"
  format            = each.value.format
  source_date_epoch = var.source_date_epoch
  cmdline           = each.value.cmdline
  policy_id         = local.policy_id

  # A "uki" image boots from a disk: its Unified Kernel Image starts with this EFI stub.
  dynamic "boot_stub" {
    for_each = each.value.boot_stub == null ? [] : [each.value.boot_stub]
    content {
      source = boot_stub.value.source
      sha256 = boot_stub.value.sha256
    }
  }

  kernel {
    source = each.value.kernel.source
    sha256 = each.value.kernel.sha256
  }

  dynamic "layer" {
    for_each = each.value.layers
    content {
      name        = layer.value.name
      source      = layer.value.source
      sha256      = layer.value.sha256
      destination = layer.value.destination
    }
  }

  dynamic "dev_access" {
    for_each = each.value.dev_access == null ? [] : [each.value.dev_access]
    content {
      ssh_authorized_keys = dev_access.value.ssh_authorized_keys
      sshd {
        source = dev_access.value.sshd.source
        sha256 = dev_access.value.sshd.sha256
      }
    }
  }
}

resource "safebox_enclave" "box" {
  for_each = local.boxes

  image_id   = safebox_image.box[each.key].id
  variant    = "prod"
  cpu_count  = var.cpu_count
  memory_mib = var.memory_mib
  policy_id  = local.policy_id
  # Known at plan time, so auditors approve exactly what will run: PCR0 to PCR2 of an "eif"
  # image (a Nitro Enclave's document), NitroTPM PCR4, PCR7 and PCR12 of a "uki" image.
  expected_pcrs = {
    for i in local.image_pcrs[each.value.format] :
    i => safebox_image.box[each.key].prod_measurements["pcr${i}"]
  }
}

resource "safebox_attested_link" "data_to_model" {
  a_enclave_id    = safebox_enclave.box["data"].id
  b_enclave_id    = safebox_enclave.box["model"].id
  a_expected_pcrs = safebox_enclave.box["data"].expected_pcrs
  b_expected_pcrs = safebox_enclave.box["model"].expected_pcrs
  policy_id       = local.policy_id
}
