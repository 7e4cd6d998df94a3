variable "name" {
  description = "Prefix for the policy and image names."
  type        = string
  default     = "pair"
}

variable "source_date_epoch" {
  description = "Timestamp every file in both images is clamped to (reproducible builds)."
  type        = number
  default     = 1700000000
}

variable "data_box" {
  description = "The customer's data box: its image's format (\"eif\", the default, or \"uki\" with a boot_stub), kernel, command line and layers (each hash-pinned), and optional SSH access for its development image."
  type = object({
    format    = optional(string, "eif")
    boot_stub = optional(object({ source = string, sha256 = string }))
    kernel    = object({ source = string, sha256 = string })
    cmdline   = optional(string, "")
    layers = list(object({
      name        = string
      source      = string
      sha256      = string
      destination = optional(string)
    }))
    dev_access = optional(object({
      ssh_authorized_keys = list(string)
      sshd                = object({ source = string, sha256 = string })
    }))
  })
}

variable "model_box" {
  description = "The model-weights box, in the same shape as data_box."
  type = object({
    format    = optional(string, "eif")
    boot_stub = optional(object({ source = string, sha256 = string }))
    kernel    = object({ source = string, sha256 = string })
    cmdline   = optional(string, "")
    layers = list(object({
      name        = string
      source      = string
      sha256      = string
      destination = optional(string)
    }))
    dev_access = optional(object({
      ssh_authorized_keys = list(string)
      sshd                = object({ source = string, sha256 = string })
    }))
  })
}

variable "signers" {
  description = "Governance signers: auditors the customer chooses, with their roles and PEM public keys."
  type = list(object({
    id             = string
    role           = string
    public_key_pem = string
  }))
}

variable "rules" {
  description = "Per-action thresholds: action (image.publish, enclave.deploy, link.create, policy.update), threshold and the roles that may approve."
  type = list(object({
    action    = string
    threshold = number
    roles     = list(string)
  }))
}

variable "governed" {
  description = "Put the images, boxes and link under the policy, so each needs approvals (collected in the provider's approvals_dir). Off, the policy is created but governs nothing yet."
  type        = bool
  default     = false
}

variable "cpu_count" {
  description = "vCPUs for each box."
  type        = number
  default     = 2
}

variable "memory_mib" {
  description = "Memory for each box, MiB."
  type        = number
  default     = 1024
}
