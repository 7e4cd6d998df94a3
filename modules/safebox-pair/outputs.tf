output "policy_digest" {
  description = "SHA-256 of the governance policy document."
  value       = safebox_policy.this.digest
}

output "data_image_measurements" {
  description = "The data box's production image: image_sha256 and its PCRs (0 to 2 of an \"eif\" image; 4, 7, 12 and disk_sha256 of a \"uki\" image)."
  value       = safebox_image.box["data"].prod_measurements
}

output "model_image_measurements" {
  description = "The model box's production image, like data_image_measurements."
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
