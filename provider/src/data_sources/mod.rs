//! One file per data source type.

pub mod attestation;

use std::sync::Arc;

use crate::resource::DataSource;

/// Every data source type the provider serves.
#[must_use]
pub fn all() -> Vec<Arc<dyn DataSource>> {
    vec![Arc::new(attestation::AttestationDataSource::new())]
}
