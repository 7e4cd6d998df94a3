//! One file per resource type.

pub mod attested_link;
pub mod enclave;
pub mod image;
pub mod policy;
pub mod sealed_key;

use std::sync::Arc;

use crate::resource::Resource;

/// Every resource type the provider serves.
#[must_use]
pub fn all() -> Vec<Arc<dyn Resource>> {
    vec![
        Arc::new(attested_link::AttestedLinkResource::new()),
        Arc::new(enclave::EnclaveResource::new()),
        Arc::new(image::ImageResource::new()),
        Arc::new(policy::PolicyResource::new()),
        Arc::new(sealed_key::SealedKeyResource::new()),
    ]
}
