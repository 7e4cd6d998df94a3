//! Fuzzes the Nitro attestation document parser and the full verifier (signature, chain,
//! policy) with the pinned AWS root, at the time of the blocky seed document.
//! The calls live in `attestation_input.rs`, which the corpus replay test shares.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "attestation_input.rs"]
mod input;

fuzz_target!(|data: &[u8]| {
    let outcome = input::run(data);
    // The verifier parses first: it must never accept what the parser refuses.
    assert!(outcome.parsed.is_ok() || outcome.verified.is_err());
});
