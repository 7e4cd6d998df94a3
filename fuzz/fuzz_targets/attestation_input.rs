//! What the `attestation` fuzz target does with one input, in a file of its own so that the
//! corpus replay test (`safebox/tests/fuzz_corpus.rs`, which includes it with `#[path]`) runs
//! exactly the calls the fuzzer runs.
//!
//! Every input goes to the parser and to the full verifier (signature, chain, policy) with the
//! pinned AWS root, at the time of the blocky seed document, with no expected PCRs, no nonce,
//! no maximum age, debug documents refused, and one `ChainCache` kept across inputs, as a
//! long-lived verifier keeps it, so cached-bundle paths are exercised too.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use safebox::attest::chain::{ChainCache, TrustRoot};
use safebox::attest::document::AttestationDocument;
use safebox::attest::verify::{verify, Policy, VerifiedDocument};
use safebox::attest::AttestationError;

/// 2024-09-07T14:37:39.545Z, when the blocky seed document was issued.
pub const AT_MS: u64 = 1_725_719_859_545;

static ROOT: OnceLock<TrustRoot> = OnceLock::new();
static CACHE: OnceLock<ChainCache> = OnceLock::new();

/// What the parser and the verifier made of one input.
pub struct Outcome {
    /// `AttestationDocument::parse`.
    pub parsed: Result<AttestationDocument, AttestationError>,
    /// `verify`.
    pub verified: Result<VerifiedDocument, AttestationError>,
}

/// Parses and verifies `data`.
pub fn run(data: &[u8]) -> Outcome {
    let parsed = AttestationDocument::parse(data);
    let root = ROOT.get_or_init(TrustRoot::aws);
    let cache = CACHE.get_or_init(ChainCache::default);
    let policy = Policy {
        root,
        at_ms: AT_MS,
        expected_pcrs: BTreeMap::new(),
        nonce: None,
        max_age_ms: None,
        allow_debug: false,
        kind: None,
    };
    let verified = verify(data, &policy, Some(cache));
    Outcome { parsed, verified }
}
