//! One file per resource type, each written against its typed model.

pub mod attested_link;
pub mod enclave;
pub mod image;
pub mod policy;
pub mod sealed_key;

use std::sync::Arc;

use crate::resource::{AnyResource, Typed};

/// Every resource type the provider serves.
#[must_use]
pub fn all() -> Vec<Arc<dyn AnyResource>> {
    vec![
        Arc::new(Typed(attested_link::AttestedLinkResource::new())),
        Arc::new(Typed(enclave::EnclaveResource::new())),
        Arc::new(Typed(image::ImageResource::new())),
        Arc::new(Typed(policy::PolicyResource::new())),
        Arc::new(Typed(sealed_key::SealedKeyResource::new())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::model::check_model;
    use crate::resource::Resource;

    #[test]
    fn every_model_matches_its_schema() {
        check_model::<attested_link::LinkModel>(&attested_link::AttestedLinkResource::new().schema().block);
        check_model::<enclave::EnclaveModel>(&enclave::EnclaveResource::new().schema().block);
        check_model::<image::ImageModel>(&image::ImageResource::new().schema().block);
        check_model::<policy::PolicyModel>(&policy::PolicyResource::new().schema().block);
        check_model::<sealed_key::SealedKeyModel>(&sealed_key::SealedKeyResource::new().schema().block);
    }
}
