//! The verification policy: what makes a parsed document trusted.
//!
//! In order: the document's kind (when the policy names one), the certificate chain to the
//! pinned root at the policy's time, the COSE signature, freshness, the nonce, debug mode
//! (enclave documents only: PCR0, PCR1 and PCR2 all zero; a NitroTPM document's PCR0 to PCR2
//! measure firmware and have no such meaning), and the expected PCRs. The first failure is
//! the answer.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::chain::{verify_chain, ChainCache, TrustRoot};
use super::document::{AttestationDocument, DocumentKind};
use super::{cbor, hex_or_absent, AttestationError};

/// How far a document's timestamp may be ahead of the verification time (clock skew).
const FUTURE_SKEW_MS: u64 = 60_000;

/// What a document must satisfy.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// The root the chain must end in.
    pub root: &'a TrustRoot,
    /// The verification time, milliseconds since 1970 (explicit, never the wall clock here).
    pub at_ms: u64,
    /// PCR index to expected value.
    pub expected_pcrs: BTreeMap<u32, Vec<u8>>,
    /// The nonce that was sent, if one was.
    pub nonce: Option<Vec<u8>>,
    /// The oldest a document may be, in milliseconds.
    pub max_age_ms: Option<u64>,
    /// Accept debug-mode documents (all-zero PCR0, PCR1, PCR2).
    pub allow_debug: bool,
    /// The kind of document required, if one is: a box of a `"uki"` image must present a
    /// NitroTPM document, a box of an `"eif"` image an enclave document
    /// ([`DocumentKind::of_format`]). `None` accepts either (a document verified on its own).
    pub kind: Option<DocumentKind>,
}

/// A document that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDocument {
    /// The parsed document.
    pub document: AttestationDocument,
    /// SHA-256 of the document bytes, hex.
    pub document_sha256: String,
}

/// Parses and verifies `bytes` under `policy`.
///
/// # Errors
/// The first [`AttestationError`] found.
pub fn verify(
    bytes: &[u8],
    policy: &Policy<'_>,
    cache: Option<&ChainCache>,
) -> Result<VerifiedDocument, AttestationError> {
    let document = AttestationDocument::parse(bytes)?;
    if let Some(expected) = policy.kind {
        if document.kind != expected {
            return Err(AttestationError::Kind {
                expected,
                actual: document.kind,
            });
        }
    }
    let leaf_key = verify_chain(
        &document.certificate,
        &document.cabundle,
        policy.root,
        policy.at_ms,
        cache,
    )?;
    // RFC 9053 section 2.1: ES384 signatures are r || s, 48 bytes each. Any s in range is
    // valid: AWS does not normalise s, so high-s signatures must verify.
    let signed = cbor::sig_structure(&document.protected, &document.payload);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, &leaf_key)
        .verify(&signed, &document.signature)
        .map_err(|_| AttestationError::Signature)?;
    if document.timestamp_ms > policy.at_ms.saturating_add(FUTURE_SKEW_MS) {
        return Err(AttestationError::FromTheFuture {
            ahead_seconds: (document.timestamp_ms - policy.at_ms) / 1000,
        });
    }
    if let Some(max_age) = policy.max_age_ms {
        let age = policy.at_ms.saturating_sub(document.timestamp_ms);
        if age > max_age {
            return Err(AttestationError::Stale {
                age_seconds: age / 1000,
                max_seconds: max_age / 1000,
            });
        }
    }
    if let Some(expected) = &policy.nonce {
        if document.nonce.as_ref() != Some(expected) {
            return Err(AttestationError::Nonce {
                expected: hex::encode(expected),
                actual: hex_or_absent(document.nonce.as_deref()),
            });
        }
    }
    let zero = |i: u32| document.pcrs.get(&i).is_none_or(|v| v.iter().all(|b| *b == 0));
    if document.kind == DocumentKind::Enclave && !policy.allow_debug && zero(0) && zero(1) && zero(2) {
        return Err(AttestationError::DebugMode);
    }
    for (index, expected) in &policy.expected_pcrs {
        let actual = document.pcrs.get(index);
        if actual != Some(expected) {
            return Err(AttestationError::Pcr {
                index: *index,
                expected: hex::encode(expected),
                actual: hex_or_absent(actual.map(Vec::as_slice)),
            });
        }
    }
    Ok(VerifiedDocument {
        document,
        document_sha256: hex::encode(Sha256::digest(bytes)),
    })
}
