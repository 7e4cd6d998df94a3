//! Fuzzes the Nitro attestation document parser and the full verifier (signature, chain,
//! policy) with the pinned AWS root, at the time of the blocky seed document.

#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use safebox::attest::chain::{ChainCache, TrustRoot};
use safebox::attest::document::AttestationDocument;
use safebox::attest::verify::{verify, Policy};

/// 2024-09-07T14:37:39.545Z, when the blocky seed document was issued.
const AT_MS: u64 = 1_725_719_859_545;

static ROOT: OnceLock<TrustRoot> = OnceLock::new();
/// Kept across runs, as a long-lived verifier keeps it, so cached-bundle paths are fuzzed too.
static CACHE: OnceLock<ChainCache> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let _ = AttestationDocument::parse(data);

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
    let _ = verify(data, &policy, Some(cache));
});
