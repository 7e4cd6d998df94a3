//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the calls the fuzz
//! targets make, so every `cargo test` runs every seed and every crash found so far
//! (fuzz/README.md says how a crash becomes a corpus entry). Nothing may panic; every
//! attestation input gives `Ok` or an `AttestationError` with a message, and the attestation
//! seeds whose purpose is known give exactly the outcome they were written for; every file
//! parser (approvals, policy documents, the audit log, manifests, seal proofs, EIFs, disks,
//! UKIs, boot configurations) returns on every input of its corpus.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use safebox::attest::AttestationError;

#[path = "../../fuzz/fuzz_targets/attestation_input.rs"]
mod attestation_input;

#[path = "../../fuzz/fuzz_targets/parsers_input.rs"]
mod parsers_input;

/// What a seed must give: the parser's outcome, then the verifier's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Parses and verifies (at the blocky document's time, under the pinned AWS root).
    Verifies,
    /// Parses; the verifier refuses it with this kind of error.
    ParsesThenRefused(Kind),
    /// The parser refuses it with this kind of error (and so does the verifier).
    Refused(Kind),
}

/// The kind of an [`AttestationError`], without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Malformed,
    TooLarge,
    Algorithm,
    Signature,
    Validity,
    Other,
}

fn kind(error: &AttestationError) -> Kind {
    match error {
        AttestationError::Malformed(_) => Kind::Malformed,
        AttestationError::TooLarge { .. } => Kind::TooLarge,
        AttestationError::Algorithm(_) => Kind::Algorithm,
        AttestationError::Signature => Kind::Signature,
        AttestationError::Validity { .. } => Kind::Validity,
        _ => Kind::Other,
    }
}

/// The seeds of `fuzz/corpus/attestation/` (see fuzz/make-seeds.py) and what each must give.
/// Inputs not listed here (regressions added later) must only not panic.
fn attestation_seeds() -> BTreeMap<&'static str, Expect> {
    use Expect::{ParsesThenRefused, Refused, Verifies};
    use Kind::{Algorithm, Malformed, Signature, TooLarge, Validity};
    [
        // Real AWS documents: blocky's at its own time; the others' certificates had expired.
        ("seed-blocky.cbor", Verifies),
        ("seed-evervault.cbor", ParsesThenRefused(Validity)),
        ("seed-tkhq.cbor", ParsesThenRefused(Validity)),
        // Derived from blocky.
        ("seed-blocky-tagged.cbor", Verifies),
        ("seed-blocky-cose-sign-tag.cbor", Refused(Malformed)),
        ("seed-blocky-truncated-head.cbor", Refused(Malformed)),
        ("seed-blocky-truncated-tail.cbor", Refused(Malformed)),
        ("seed-blocky-trailing-byte.cbor", Refused(Malformed)),
        ("seed-blocky-es256.cbor", Refused(Algorithm)),
        ("seed-blocky-bad-signature.cbor", ParsesThenRefused(Signature)),
        ("seed-blocky-payload-flip.cbor", ParsesThenRefused(Signature)),
        ("seed-too-many-pcrs.cbor", Refused(TooLarge)),
        ("seed-pcr-index-out-of-range.cbor", Refused(Malformed)),
        ("seed-cabundle-too-long.cbor", Refused(TooLarge)),
        ("seed-payload-not-a-map.cbor", Refused(Malformed)),
        // Malformed CBOR.
        ("seed-empty.cbor", Refused(Malformed)),
        ("seed-huge-length.cbor", Refused(Malformed)),
        ("seed-deep-nesting.cbor", Refused(Malformed)),
        ("seed-map-not-array.cbor", Refused(Malformed)),
    ]
    .into()
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the fuzz corpus {} is unreadable: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

#[test]
fn every_attestation_corpus_input_gives_ok_or_a_typed_error_and_each_seed_its_own() {
    let files = corpus("attestation");
    let seeds = attestation_seeds();
    let present: Vec<String> = files.iter().map(|f| name(f)).collect();
    for seed in seeds.keys() {
        assert!(
            present.iter().any(|p| p == seed),
            "the corpus lost {seed}; it has {present:?}"
        );
    }
    let mut wrong = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("corpus input");
        let outcome = catch_unwind(AssertUnwindSafe(|| attestation_input::run(&data)))
            .unwrap_or_else(|_| panic!("{} made the parser or the verifier panic", file.display()));
        for error in [outcome.parsed.as_ref().err(), outcome.verified.as_ref().err()]
            .into_iter()
            .flatten()
        {
            assert!(
                !error.to_string().is_empty(),
                "{}: an error without a message",
                name(file)
            );
        }
        // The verifier parses first: it can never accept what the parser refuses.
        assert!(
            outcome.parsed.is_ok() || outcome.verified.is_err(),
            "{}: verified without parsing",
            name(file)
        );
        let got = match (&outcome.parsed, &outcome.verified) {
            (Ok(_), Ok(_)) => Expect::Verifies,
            (Ok(_), Err(e)) => Expect::ParsesThenRefused(kind(e)),
            (Err(e), _) => Expect::Refused(kind(e)),
        };
        if let Some(expected) = seeds.get(name(file).as_str()) {
            if got != *expected {
                let detail = outcome
                    .parsed
                    .as_ref()
                    .err()
                    .or(outcome.verified.as_ref().err())
                    .map(ToString::to_string)
                    .unwrap_or_default();
                wrong.push(format!("{}: {got:?} ({detail}), expected {expected:?}", name(file)));
            }
        }
    }
    assert!(wrong.is_empty(), "seeds with another outcome:\n{}", wrong.join("\n"));
}

#[test]
fn every_file_parser_returns_on_every_input_of_its_corpus() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml"))
        .expect("fuzz/Cargo.toml");
    for (target, run) in parsers_input::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no target {target}"
        );
        let files = corpus(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} has no seeds");
        for file in files {
            let data = std::fs::read(&file).expect("corpus input");
            catch_unwind(AssertUnwindSafe(|| run(&data)))
                .unwrap_or_else(|_| panic!("{} made the {target} parser panic", file.display()));
        }
    }
}
