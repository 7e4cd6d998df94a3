//! One file per resource type.

pub mod attested_link;
pub mod enclave;
pub mod image;
pub mod policy;
pub mod record;
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

/// RFC 3339 (UTC) of a time in milliseconds since 1970.
#[must_use]
pub fn rfc3339_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
