//! Verifications per second of a real AWS attestation document on one core, with the full
//! chain and with the verified intermediate chain cached. Used by `scripts/bench-attestation`.
//!
//!     cargo run --release -p safebox --example verify_rate -- DOCUMENT.cbor RFC3339 [SECONDS]

use std::time::{Duration, Instant};

use safebox::attest::chain::{ChainCache, TrustRoot};
use safebox::attest::verify::{verify, Policy};

fn rate(seconds: f64, mut run: impl FnMut()) -> f64 {
    // Warm up, then count whole verifications until the time is up.
    for _ in 0..20 {
        run();
    }
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        run();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(at)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: verify_rate DOCUMENT.cbor RFC3339 [SECONDS]");
        std::process::exit(2);
    };
    let seconds: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let document = std::fs::read(path).expect("read the document");
    let at = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).expect("an RFC 3339 time");
    let root = TrustRoot::aws();
    let policy = Policy {
        root: &root,
        at_ms: u64::try_from(at.unix_timestamp_nanos() / 1_000_000).expect("after 1970"),
        expected_pcrs: Default::default(),
        nonce: None,
        max_age_ms: None,
        allow_debug: false,
        kind: None,
    };
    verify(&document, &policy, None).expect("the document verifies");
    let full = rate(seconds, || {
        verify(&document, &policy, None).expect("verifies");
    });
    let cache = ChainCache::default();
    let cached = rate(seconds, || {
        verify(&document, &policy, Some(&cache)).expect("verifies");
    });
    println!("full_chain_per_s {full:.1}");
    println!("cached_chain_per_s {cached:.1}");
}
