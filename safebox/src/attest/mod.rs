//! AWS Nitro attestation: verify before trust.
//!
//! - [`document`]: the wire format. A COSE_Sign1 (RFC 9052) whose payload is a Nitro
//!   attestation document (a CBOR map of nine fields): a Nitro Enclave's (`pcrs`) or an EC2
//!   instance's NitroTPM document (`nitrotpm_pcrs`), told apart by [`document::DocumentKind`];
//!   parsed strictly, with a size limit on every field, keeping the raw payload bytes for the
//!   signature check.
//! - [`chain`]: the certificate chain, leaf to pinned root, checked at an explicit time.
//! - [`verify`]: the policy that judges a parsed document: its kind, signature, chain, PCRs,
//!   nonce, freshness, debug mode. [`verify::verify`] is the one entry point.
//! - [`simulated`]: the local backend's software NSM, which issues documents of exactly the
//!   AWS formats (either kind) under a per-`state_dir` simulated root, and per-box signing
//!   leaves for agents that sign inside a booted box.
//!
//! Every rejection is an [`AttestationError`] whose message is one sentence.

pub(crate) mod cbor;
pub mod chain;
pub mod document;
pub mod simulated;
pub mod verify;

/// Why an attestation document is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// Not a well-formed attestation document.
    #[error("the attestation document is malformed: {0}")]
    Malformed(String),
    /// A field exceeds its size limit.
    #[error("the attestation document's {field} has {size} {unit}, over the limit of {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
        /// What is counted: `bytes`, `certificates`, `PCRs`.
        unit: &'static str,
    },
    /// The COSE algorithm is not ES384.
    #[error("the attestation document is signed with COSE algorithm {0}, not ES384 (-35)")]
    Algorithm(String),
    /// The document signature does not verify under the leaf certificate's key.
    #[error("the attestation document's signature does not verify with its certificate's key")]
    Signature,
    /// The bundle's root is not the pinned trust root.
    #[error("the certificate chain ends in a root with SHA-256 {found}, not the pinned trust root {pinned}")]
    UntrustedRoot {
        /// The bundle root's fingerprint.
        found: String,
        /// The pinned root's fingerprint.
        pinned: String,
    },
    /// A certificate is not validly signed by its issuer, or the chain is malformed.
    #[error("certificate {position} of the chain is not valid: {reason}")]
    Chain {
        /// Which certificate (leaf, cabundle[i]).
        position: String,
        /// Why.
        reason: String,
    },
    /// A certificate is outside its validity period at the verification time.
    #[error("certificate {position} is not valid at {at}: it is valid from {not_before} to {not_after}")]
    Validity {
        /// Which certificate.
        position: String,
        /// The verification time (RFC 3339).
        at: String,
        /// Its notBefore.
        not_before: String,
        /// Its notAfter.
        not_after: String,
    },
    /// A PCR differs from the expected value.
    #[error("PCR{index} is {actual}, expected {expected}")]
    Pcr {
        /// The PCR index.
        index: u32,
        /// The expected value (hex).
        expected: String,
        /// The document's value (hex, or "absent").
        actual: String,
    },
    /// The nonce differs from the one sent.
    #[error("the attestation document's nonce is {actual}, not the nonce that was sent ({expected})")]
    Nonce {
        /// The expected nonce (hex).
        expected: String,
        /// The document's nonce (hex, or "absent").
        actual: String,
    },
    /// The document is older than allowed.
    #[error("the attestation document is {age_seconds} s old, older than the allowed {max_seconds} s")]
    Stale {
        /// Its age.
        age_seconds: u64,
        /// The limit.
        max_seconds: u64,
    },
    /// The document claims a time after the verification time.
    #[error("the attestation document is timestamped {ahead_seconds} s after the verification time")]
    FromTheFuture {
        /// How far ahead.
        ahead_seconds: u64,
    },
    /// The document is of another kind than the one required (an enclave document where a
    /// NitroTPM document is required, or the reverse).
    #[error("the attestation document is {}, not {}: {}", .actual.describe(), .expected.describe(), kind_rule(*.expected))]
    Kind {
        /// The kind required.
        expected: document::DocumentKind,
        /// The document's kind.
        actual: document::DocumentKind,
    },
    /// PCR0, PCR1 and PCR2 are all zero: the enclave runs in debug mode.
    #[error("the enclave runs in debug mode (PCR0, PCR1 and PCR2 are all zero), where its memory can be read; allow debug documents explicitly if this is intended")]
    DebugMode,
}

/// Why a kind is required, for [`AttestationError::Kind`].
fn kind_rule(expected: document::DocumentKind) -> &'static str {
    match expected {
        document::DocumentKind::NitroTpm => "a box of a \"uki\" image must present a NitroTPM document",
        document::DocumentKind::Enclave => "a box of an \"eif\" image must present a Nitro Enclave document",
    }
}

/// Lower-case hex, or "absent".
pub(crate) fn hex_or_absent(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "absent".to_owned(), hex::encode)
}

/// RFC 3339 of a time in milliseconds since 1970, for messages.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}
