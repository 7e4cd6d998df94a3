//! `safebox attestation verify` as DESIGN.md specifies it: flags, JSON output, exit codes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use safebox::attest::simulated::{AttestationRequest, SimulatedNitro};

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nitro");
    assert!(
        dir.is_dir(),
        "the real Nitro documents these tests need are missing at {}: put the shared/ folder (shared/fixtures/nitro) beside the repository checkout, at ../shared from its root (README, Tests)",
        dir.display()
    );
    dir
}

fn safebox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_safebox")).args(args).output().unwrap()
}

fn one_line_failure(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(out.stdout.is_empty());
    stderr
}

#[test]
fn a_valid_document_prints_its_contents_as_json() {
    let doc = fixtures().join("blocky_nitrite_20240907.cbor");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("blocky_nitrite_20240907.json")).unwrap())
            .unwrap();
    let pcr0 = meta["expected_pcr0"].as_str().unwrap();
    let out = safebox(&[
        "attestation",
        "verify",
        "--document",
        doc.to_str().unwrap(),
        "--at",
        "2024-09-07T14:37:39.545Z",
        "--pcr",
        &format!("0={pcr0}"),
        "--pcr",
        &format!("1={}", meta["expected_pcr1"].as_str().unwrap()),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["module_id"], meta["expected_module_id"]);
    assert_eq!(json["pcrs"]["0"], pcr0);
    assert_eq!(json["pcrs"]["4"], meta["expected_pcr4"]);
    assert_eq!(json["nonce"], "01".repeat(1024));
    assert_eq!(json["public_key"], "01".repeat(1024));
    assert_eq!(json["user_data"], "01".repeat(1024));
    // The document's own field (milliseconds since the epoch), and the same as text.
    assert_eq!(json["timestamp"], meta["document_timestamp_ms"]);
    assert_eq!(json["timestamp_rfc3339"], "2024-09-07T14:37:39.545Z");
}

#[test]
fn base64_documents_and_nonces_work_too() {
    let doc = std::fs::read(fixtures().join("tkhq_qos_20220706.cbor")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.b64");
    use base64::Engine as _;
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode(&doc)).unwrap();
    let out = safebox(&[
        "attestation",
        "verify",
        "--document",
        path.to_str().unwrap(),
        "--at",
        "2022-07-06T14:19:52Z",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["nonce"].is_null(), "absent fields are null");
    let stderr = one_line_failure(&safebox(&[
        "attestation",
        "verify",
        "--document",
        path.to_str().unwrap(),
        "--at",
        "2022-07-06T14:19:52Z",
        "--nonce",
        "abcd",
    ]));
    assert!(stderr.contains("nonce"), "{stderr}");
}

#[test]
fn every_failure_exits_1_with_one_line() {
    let doc = fixtures().join("evervault_nondebug_20230118.cbor");
    let doc = doc.to_str().unwrap();
    // Now: the leaf expired years ago.
    assert!(one_line_failure(&safebox(&["attestation", "verify", "--document", doc])).contains("not valid at"));
    let at = "2023-01-18T13:07:19.280Z";
    assert!(one_line_failure(&safebox(&[
        "attestation",
        "verify",
        "--document",
        doc,
        "--at",
        at,
        "--pcr",
        &format!("0={}", "00".repeat(48))
    ]))
    .contains("PCR0"));
    let dir = tempfile::tempdir().unwrap();
    let nitro = SimulatedNitro::open_or_create(dir.path()).unwrap();
    let other_root = dir.path().join("root.pem");
    assert!(one_line_failure(&safebox(&[
        "attestation",
        "verify",
        "--document",
        doc,
        "--at",
        at,
        "--root",
        other_root.to_str().unwrap()
    ]))
    .contains("pinned trust root"));
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"\x84\x01\x02").unwrap();
    assert!(one_line_failure(&safebox(&[
        "attestation",
        "verify",
        "--document",
        junk.to_str().unwrap()
    ]))
    .contains("malformed"));

    // Debug-mode documents need --allow-debug.
    let debug = nitro
        .attest(
            &AttestationRequest {
                module_id: "i-debug".into(),
                pcrs: (0..16).map(|i| (i, vec![0; 48])).collect::<BTreeMap<_, _>>(),
                ..Default::default()
            },
            1_800_000_000_000,
        )
        .unwrap();
    let debug_path = dir.path().join("debug.cbor");
    std::fs::write(&debug_path, debug).unwrap();
    let args = [
        "attestation",
        "verify",
        "--document",
        debug_path.to_str().unwrap(),
        "--root",
        other_root.to_str().unwrap(),
        "--at",
        "2027-01-15T08:00:00Z",
    ];
    assert!(one_line_failure(&safebox(&args)).contains("debug mode"));
    let mut allowed = args.to_vec();
    allowed.push("--allow-debug");
    let out = safebox(&allowed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kind_names_the_document_and_can_be_required() {
    let doc = fixtures().join("blocky_nitrite_20240907.cbor");
    let doc = doc.to_str().unwrap();
    let at = "2024-09-07T14:37:39.545Z";
    let out = safebox(&[
        "attestation",
        "verify",
        "--document",
        doc,
        "--at",
        at,
        "--kind",
        "enclave",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], "enclave");
    let refused = one_line_failure(&safebox(&[
        "attestation",
        "verify",
        "--document",
        doc,
        "--at",
        at,
        "--kind",
        "nitrotpm",
    ]));
    assert!(refused.contains("not a NitroTPM document"), "{refused}");
    let unknown = one_line_failure(&safebox(&["attestation", "verify", "--document", doc, "--kind", "tpm"]));
    assert!(unknown.contains("use enclave or nitrotpm"), "{unknown}");
}
