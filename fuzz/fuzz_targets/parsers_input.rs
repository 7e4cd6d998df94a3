//! What the file-parser fuzz targets do with one input, in a file of its own so that the corpus
//! replay test (`safebox/tests/fuzz_corpus.rs`, which includes it with `#[path]`) runs exactly
//! the calls the fuzzer runs. Each takes bytes an attacker may write: an approvals file, a
//! policy document or record, the audit log, a build manifest, a seal proof, an EIF, a disk
//! image, a UKI, a box's boot configuration. Each must return, never panic; what they return
//! is not judged here (the unit tests do), only that they return.

use std::io::Cursor;

use safebox::agent_api::BootConfig;
use safebox::govern::approval::parse_approvals;
use safebox::govern::audit::{verify, VerifyOptions};
use safebox::govern::policy::Policy;
use safebox::image::disk::read_payload_file;
use safebox::image::eif::Eif;
use safebox::image::inspect::UkiInspection;
use safebox::image::manifest::parse_manifest;
use safebox::image::seal::SealProof;

/// One parser's call on one input.
pub type Parser = fn(&[u8]);

/// The parsers, by fuzz target (and corpus folder) name.
pub const TARGETS: [(&str, Parser); 9] = [
    ("approvals", approvals),
    ("policy_document", policy_document),
    ("audit_log", audit_log),
    ("manifest", manifest),
    ("seal_proof", seal_proof),
    ("eif", eif),
    ("disk", disk),
    ("uki", uki),
    ("boot_config", boot_config),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// An approvals file (`approvals_dir`, the store, `--dir`).
pub fn approvals(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = parse_approvals(text);
    }
}

/// A stored policy's document.
pub fn policy_document(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = Policy::from_document(text);
    }
}

/// The audit log, verified with no trusted policy and no expected head.
pub fn audit_log(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = verify(
            text,
            &VerifyOptions {
                trusted: None,
                expect_head: None,
            },
        );
    }
}

/// A build manifest (`safebox image rebuild`).
pub fn manifest(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = parse_manifest(text);
    }
}

/// A seal proof, then checked against the input as both UKIs.
pub fn seal_proof(data: &[u8]) {
    if let Ok(proof) = serde_json::from_slice::<SealProof>(data) {
        let _ = proof.verify_uki(data, data);
    }
}

/// An EIF (`safebox image inspect`, artifacts read back).
pub fn eif(data: &[u8]) {
    let _ = Eif::parse(Cursor::new(data));
}

/// A disk image: its UKI, manifest and seal proof read back.
pub fn disk(data: &[u8]) {
    for name in ["EFI/BOOT/BOOTX64.EFI", "manifest.json", "seal-proof.json"] {
        let _ = read_payload_file(&mut Cursor::new(data), name);
    }
}

/// A UKI: its sections and PCRs recomputed.
pub fn uki(data: &[u8]) {
    let _ = UkiInspection::of(data);
}

/// A box's boot configuration (user data, fw_cfg).
pub fn boot_config(data: &[u8]) {
    let _ = BootConfig::parse(data, "fuzz input");
}
