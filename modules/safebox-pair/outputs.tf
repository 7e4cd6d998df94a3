output "policy_digest" {
  description = "SHA-256 of the governance policy document."
  value       = safebox_policy.this.digest
}

output "data_image_measurements" {
  description = "The data box's production image: image_sha256 and PCRs 0 to 2."
  value       = safebox_image.box["data"].prod_measurements
}

output "model_image_measurements" {
  description = "The model box's production image: image_sha256 and PCRs 0 to 2."
  value       = safebox_image.box["model"].prod_measurements
}

output "data_endpoint" {
  description = "Where the data box's agent answers."
  value       = safebox_enclave.box["data"].endpoint
}

output "model_endpoint" {
  description = "Where the model box's agent answers."
  value       = safebox_enclave.box["model"].endpoint
}

output "link_id" {
  description = "The attested link's id."
  value       = safebox_attested_link.data_to_model.id
}

output "link_binding_sha256" {
  description = "Binds both boxes' attestation documents and keys; both boxes report it."
  value       = safebox_attested_link.data_to_model.binding_sha256
}
