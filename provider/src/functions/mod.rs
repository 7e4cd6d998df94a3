//! One file per provider-defined function.

pub mod pcr_digest;
pub mod verify_attestation;

use std::sync::Arc;

use crate::framework::function::Function;

/// Every function the provider serves.
#[must_use]
pub fn all() -> Vec<Arc<dyn Function>> {
    vec![
        Arc::new(pcr_digest::PcrDigest),
        Arc::new(verify_attestation::VerifyAttestation),
    ]
}
