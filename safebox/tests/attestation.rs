//! The Nitro verifier on real AWS documents (shared/fixtures/nitro) and on negative variants
//! built from them, plus the software NSM's documents.

use std::collections::BTreeMap;
use std::path::PathBuf;

use safebox::attest::chain::{ChainCache, TrustRoot, AWS_ROOT_SHA256};
use safebox::attest::document::DocumentKind;
use safebox::attest::simulated::{AttestationRequest, SimulatedLeaf, SimulatedNitro};
use safebox::attest::verify::{verify, Policy};
use safebox::attest::AttestationError;
use serde_json::Value;

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nitro");
    assert!(
        dir.is_dir(),
        "the real Nitro documents these tests need are missing at {}: put the shared/ folder (shared/fixtures/nitro) beside the repository checkout, at ../shared from its root (README, Tests)",
        dir.display()
    );
    dir
}

struct Fixture {
    name: &'static str,
    document: Vec<u8>,
    meta: Value,
}

fn ms(rfc3339: &str) -> u64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
}

fn load(name: &'static str) -> Fixture {
    let dir = fixtures();
    Fixture {
        name,
        document: std::fs::read(dir.join(format!("{name}.cbor"))).unwrap(),
        meta: serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap(),
    }
}

fn all() -> Vec<Fixture> {
    [
        "blocky_nitrite_20240907",
        "evervault_nondebug_20230118",
        "tkhq_qos_20220706",
    ]
    .into_iter()
    .map(load)
    .collect()
}

fn policy<'a>(root: &'a TrustRoot, fixture: &Fixture) -> Policy<'a> {
    Policy {
        root,
        at_ms: ms(fixture.meta["verification_time"].as_str().unwrap()),
        expected_pcrs: BTreeMap::new(),
        nonce: None,
        max_age_ms: None,
        allow_debug: false,
        kind: None,
    }
}

#[test]
fn the_embedded_root_is_the_published_aws_root() {
    let root = TrustRoot::aws();
    assert_eq!(root.sha256(), AWS_ROOT_SHA256);
    let shared =
        TrustRoot::from_pem(&std::fs::read_to_string(fixtures().join("aws_nitro_enclaves_root_g1.pem")).unwrap())
            .unwrap();
    assert_eq!(root, shared);
}

#[test]
fn real_aws_documents_verify_with_their_expected_values() {
    let root = TrustRoot::aws();
    for fixture in all() {
        let mut p = policy(&root, &fixture);
        for index in [0u32, 1, 2] {
            let expected = fixture.meta[format!("expected_pcr{index}")].as_str().unwrap();
            p.expected_pcrs.insert(index, hex::decode(expected).unwrap());
        }
        let verified = verify(&fixture.document, &p, None).unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
        let doc = &verified.document;
        assert_eq!(
            doc.module_id,
            fixture.meta["expected_module_id"].as_str().unwrap(),
            "{}",
            fixture.name
        );
        assert_eq!(
            doc.timestamp_ms,
            fixture.meta["document_timestamp_ms"].as_u64().unwrap(),
            "{}",
            fixture.name
        );
        assert_eq!(doc.digest, "SHA384");
        assert_eq!(
            doc.cabundle.len() as u64,
            fixture.meta["cabundle_length"].as_u64().unwrap()
        );
        let present = &fixture.meta["optional_fields_present"];
        assert_eq!(
            doc.public_key.is_some(),
            present["public_key"].as_bool().unwrap(),
            "{}",
            fixture.name
        );
        assert_eq!(
            doc.nonce.is_some(),
            present["nonce"].as_bool().unwrap(),
            "{}",
            fixture.name
        );
        assert_eq!(verified.document_sha256, fixture.meta["sha256"].as_str().unwrap());
    }
}

#[test]
fn after_the_leaf_expires_the_document_is_refused() {
    let root = TrustRoot::aws();
    for fixture in all() {
        let mut p = policy(&root, &fixture);
        p.at_ms = ms(fixture.meta["time_outside_validity_expected_to_fail"].as_str().unwrap());
        let err = verify(&fixture.document, &p, None).unwrap_err();
        assert!(
            matches!(err, AttestationError::Validity { .. }),
            "{}: {err}",
            fixture.name
        );
        assert!(err.to_string().contains("leaf"), "{err}");
    }
}

fn refused(fixture: &Fixture, document: &[u8]) -> AttestationError {
    let root = TrustRoot::aws();
    verify(document, &policy(&root, fixture), None).unwrap_err()
}

#[test]
fn tampered_documents_are_refused_with_the_reason() {
    for fixture in all() {
        let doc = &fixture.document;
        // The signature is the last 96 bytes of an untagged document.
        let mut flipped = doc.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert_eq!(
            refused(&fixture, &flipped),
            AttestationError::Signature,
            "{}",
            fixture.name
        );

        // A PCR byte inside the signed payload.
        let pcr0 = hex::decode(fixture.meta["expected_pcr0"].as_str().unwrap()).unwrap();
        let at = doc
            .windows(48)
            .position(|w| w == pcr0.as_slice())
            .expect("PCR0 bytes in the payload");
        let mut changed = doc.clone();
        changed[at] ^= 0x80;
        assert_eq!(
            refused(&fixture, &changed),
            AttestationError::Signature,
            "{}",
            fixture.name
        );

        let err = refused(&fixture, &doc[..doc.len() - 10]);
        assert!(matches!(err, AttestationError::Malformed(_)), "{}: {err}", fixture.name);

        let mut trailing = doc.clone();
        trailing.push(0x00);
        let err = refused(&fixture, &trailing);
        assert!(err.to_string().contains("unexpected bytes"), "{}: {err}", fixture.name);

        // Protected header {1: -35} -> {1: -36} (ES512).
        assert_eq!(&doc[1..6], &[0x44, 0xa1, 0x01, 0x38, 0x22], "{}", fixture.name);
        let mut algorithm = doc.clone();
        algorithm[5] = 0x23;
        let err = refused(&fixture, &algorithm);
        assert!(matches!(err, AttestationError::Algorithm(_)), "{}", fixture.name);
        assert!(
            err.to_string().contains("COSE algorithm -36, not ES384 (-35)"),
            "{}: {err}",
            fixture.name
        );

        // Protected header {1: -35, 1: -35}: a repeated label is refused, as in the payload.
        let mut repeated = doc[..1].to_vec();
        repeated.extend_from_slice(&[0x47, 0xa2, 0x01, 0x38, 0x22, 0x01, 0x38, 0x22]);
        repeated.extend_from_slice(&doc[6..]);
        let err = refused(&fixture, &repeated);
        assert!(err.to_string().contains("alg twice"), "{}: {err}", fixture.name);
    }
}

#[test]
fn a_bundle_with_another_root_is_refused_even_if_self_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let nitro = SimulatedNitro::open_or_create(dir.path()).unwrap();
    let fixture = load("blocky_nitrite_20240907");
    // The AWS document checked against another pinned root.
    let other = nitro.trust_root().unwrap();
    let err = verify(&fixture.document, &policy(&other, &fixture), None).unwrap_err();
    assert!(matches!(err, AttestationError::UntrustedRoot { .. }), "{err}");
    assert!(
        err.to_string().contains(AWS_ROOT_SHA256),
        "names the root it found: {err}"
    );
}

/// n - s for the P-384 group order n: the other valid s for the same signature.
fn negate_s(s: &[u8]) -> Vec<u8> {
    let n =
        hex::decode("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973")
            .unwrap();
    let mut out = vec![0u8; 48];
    let mut borrow = 0i16;
    for i in (0..48).rev() {
        let mut d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[i] = d as u8;
    }
    out
}

#[test]
fn both_high_and_low_s_signatures_are_valid() {
    let root = TrustRoot::aws();
    for fixture in all() {
        let doc = &fixture.document;
        let mut mirrored = doc.clone();
        let s_at = doc.len() - 48;
        let s = negate_s(&doc[s_at..]);
        mirrored[s_at..].copy_from_slice(&s);
        verify(&mirrored, &policy(&root, &fixture), None).unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
    }
}

#[test]
fn tagged_and_untagged_cose_both_verify() {
    let root = TrustRoot::aws();
    let fixture = load("tkhq_qos_20220706");
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&fixture.document);
    verify(&tagged, &policy(&root, &fixture), None).unwrap();
}

#[test]
fn policy_checks_pcrs_nonce_age_and_debug_mode() {
    let dir = tempfile::tempdir().unwrap();
    let nitro = SimulatedNitro::open_or_create(dir.path()).unwrap();
    let root = nitro.trust_root().unwrap();
    let now = 1_800_000_000_000u64;
    let pcrs: BTreeMap<u32, Vec<u8>> = (0..16).map(|i| (i, vec![if i < 3 { 0xab } else { 0 }; 48])).collect();
    let request = AttestationRequest {
        kind: DocumentKind::Enclave,
        module_id: "i-local-enc01".into(),
        pcrs: pcrs.clone(),
        public_key: Some(vec![4; 97]),
        user_data: None,
        nonce: Some(vec![7; 32]),
    };
    let doc = nitro.attest(&request, now).unwrap();
    let base = Policy {
        root: &root,
        at_ms: now + 5_000,
        expected_pcrs: BTreeMap::from([(0, vec![0xab; 48])]),
        nonce: Some(vec![7; 32]),
        max_age_ms: Some(60_000),
        allow_debug: false,
        kind: None,
    };
    let verified = verify(&doc, &base, None).unwrap();
    assert_eq!(verified.document.pcrs, pcrs);
    assert_eq!(verified.document.public_key, Some(vec![4; 97]));

    let mut p = base.clone();
    p.expected_pcrs.insert(2, vec![0xcd; 48]);
    assert!(matches!(
        verify(&doc, &p, None),
        Err(AttestationError::Pcr { index: 2, .. })
    ));
    let mut p = base.clone();
    p.nonce = Some(vec![8; 32]);
    assert!(matches!(verify(&doc, &p, None), Err(AttestationError::Nonce { .. })));
    let mut p = base.clone();
    p.at_ms = now + 120_000;
    assert!(matches!(
        verify(&doc, &p, None),
        Err(AttestationError::Stale {
            age_seconds: 120,
            max_seconds: 60
        })
    ));
    let mut p = base.clone();
    p.at_ms = now - 600_000;
    let err = verify(&doc, &p, None).unwrap_err();
    assert!(
        matches!(
            err,
            AttestationError::Validity { .. } | AttestationError::FromTheFuture { .. }
        ),
        "{err}"
    );

    let debug = nitro
        .attest(
            &AttestationRequest {
                pcrs: (0..16).map(|i| (i, vec![0; 48])).collect(),
                ..request.clone()
            },
            now,
        )
        .unwrap();
    let mut p = base.clone();
    p.expected_pcrs.clear();
    assert_eq!(verify(&debug, &p, None).unwrap_err(), AttestationError::DebugMode);
    p.allow_debug = true;
    verify(&debug, &p, None).unwrap();
}

#[test]
fn a_cached_chain_gives_the_same_answers() {
    let root = TrustRoot::aws();
    let cache = ChainCache::default();
    for fixture in all() {
        let p = policy(&root, &fixture);
        verify(&fixture.document, &p, Some(&cache)).unwrap();
        verify(&fixture.document, &p, Some(&cache)).unwrap();
        let mut late = p.clone();
        late.at_ms = ms(fixture.meta["time_outside_validity_expected_to_fail"].as_str().unwrap());
        assert!(
            verify(&fixture.document, &late, Some(&cache)).is_err(),
            "expiry is checked on cache hits too"
        );
        let mut flipped = fixture.document.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            verify(&flipped, &p, Some(&cache)).unwrap_err(),
            AttestationError::Signature
        );
    }
}

/// A NitroTPM document of the simulated hierarchy, PCR0 to PCR23 as a standard boot leaves
/// them (PCR0 to PCR2 measured firmware, PCR12 zero).
fn nitrotpm_request() -> AttestationRequest {
    AttestationRequest {
        kind: DocumentKind::NitroTpm,
        module_id: "local-box-tpm".into(),
        pcrs: (0..24)
            .map(|i| (i, vec![if i == 12 { 0 } else { 0x40 + i as u8 }; 48]))
            .collect(),
        public_key: Some(vec![4; 97]),
        user_data: None,
        nonce: Some(vec![9; 32]),
    }
}

#[test]
fn nitrotpm_documents_verify_like_enclave_documents_and_say_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let nitro = SimulatedNitro::open_or_create(dir.path()).unwrap();
    let root = nitro.trust_root().unwrap();
    let now = 1_800_000_000_000u64;
    let request = nitrotpm_request();
    let doc = nitro.attest(&request, now).unwrap();
    let expected = |i: u32| (i, request.pcrs[&i].clone());
    let base = Policy {
        root: &root,
        at_ms: now + 1_000,
        expected_pcrs: BTreeMap::from([expected(4), expected(7), expected(12)]),
        nonce: Some(vec![9; 32]),
        max_age_ms: Some(60_000),
        allow_debug: false,
        kind: Some(DocumentKind::NitroTpm),
    };
    let verified = verify(&doc, &base, None).unwrap();
    assert_eq!(verified.document.kind, DocumentKind::NitroTpm);
    assert_eq!(verified.document.pcrs, request.pcrs);
    // Without a required kind, either kind verifies.
    verify(
        &doc,
        &Policy {
            kind: None,
            ..base.clone()
        },
        None,
    )
    .unwrap();

    // The same checks as for enclaves: nonce, freshness, signature, PCRs (naming the PCR).
    let mut p = base.clone();
    p.nonce = Some(vec![8; 32]);
    assert!(matches!(verify(&doc, &p, None), Err(AttestationError::Nonce { .. })));
    let mut p = base.clone();
    p.at_ms = now + 120_000;
    assert!(matches!(verify(&doc, &p, None), Err(AttestationError::Stale { .. })));
    let mut flipped = doc.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(verify(&flipped, &base, None).unwrap_err(), AttestationError::Signature);
    let mut p = base.clone();
    p.expected_pcrs.insert(4, vec![0xee; 48]);
    let err = verify(&doc, &p, None).unwrap_err();
    assert!(matches!(err, AttestationError::Pcr { index: 4, .. }), "{err}");
    assert!(err.to_string().starts_with("PCR4 is "), "{err}");
    let mut p = base.clone();
    p.expected_pcrs.insert(15, vec![0; 48]);
    p.expected_pcrs.insert(30, vec![0; 48]);
    let err = verify(&doc, &p, None).unwrap_err();
    assert!(err.to_string().contains("PCR15"), "{err}");

    // Debug mode is an enclave notion: a NitroTPM document with zero PCR0..2 is judged by its
    // expected PCRs only.
    let zeros = nitro
        .attest(
            &AttestationRequest {
                pcrs: (0..24).map(|i| (i, vec![0; 48])).collect(),
                ..request.clone()
            },
            now,
        )
        .unwrap();
    let mut p = base.clone();
    p.expected_pcrs.clear();
    verify(&zeros, &p, None).unwrap();
}

#[test]
fn mixing_the_kinds_fails_closed_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let nitro = SimulatedNitro::open_or_create(dir.path()).unwrap();
    let root = nitro.trust_root().unwrap();
    let now = 1_800_000_000_000u64;
    let tpm = nitro.attest(&nitrotpm_request(), now).unwrap();
    let enclave = nitro
        .attest(
            &AttestationRequest {
                kind: DocumentKind::Enclave,
                ..nitrotpm_request()
            },
            now,
        )
        .unwrap();
    let requiring = |kind| Policy {
        root: &root,
        at_ms: now,
        expected_pcrs: BTreeMap::new(),
        nonce: None,
        max_age_ms: None,
        allow_debug: false,
        kind: Some(kind),
    };
    let err = verify(&enclave, &requiring(DocumentKind::NitroTpm), None).unwrap_err();
    assert_eq!(
        err,
        AttestationError::Kind {
            expected: DocumentKind::NitroTpm,
            actual: DocumentKind::Enclave
        }
    );
    assert_eq!(
        err.to_string(),
        "the attestation document is a Nitro Enclave document (pcrs), not a NitroTPM document (nitrotpm_pcrs): a box of a \"uki\" image must present a NitroTPM document"
    );
    let err = verify(&tpm, &requiring(DocumentKind::Enclave), None).unwrap_err();
    assert!(
        err.to_string()
            .contains("is a NitroTPM document (nitrotpm_pcrs), not a Nitro Enclave document (pcrs)"),
        "{err}"
    );
    verify(&enclave, &requiring(DocumentKind::Enclave), None).unwrap();
    verify(&tpm, &requiring(DocumentKind::NitroTpm), None).unwrap();
    // Real AWS enclave documents are enclave documents.
    let aws = TrustRoot::aws();
    for fixture in all() {
        let mut p = policy(&aws, &fixture);
        p.kind = Some(DocumentKind::Enclave);
        let verified = verify(&fixture.document, &p, None).unwrap();
        assert_eq!(verified.document.kind, DocumentKind::Enclave);
        p.kind = Some(DocumentKind::NitroTpm);
        assert!(matches!(
            verify(&fixture.document, &p, None),
            Err(AttestationError::Kind { .. })
        ));
    }
}

#[test]
fn a_box_leaf_travels_as_pem_and_signs_documents_of_the_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let nitro = SimulatedNitro::open_or_create(dir.path()).unwrap();
    let root = nitro.trust_root().unwrap();
    let issued_at = 1_800_000_000_000u64;
    let leaf = nitro.issue_box_leaf("local-box-tpm", issued_at).unwrap();
    let pem = leaf.to_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 3);
    assert!(!format!("{leaf:?}").contains("PRIVATE"));
    let inside = SimulatedLeaf::from_pem(&pem).unwrap();
    assert_eq!(inside.trust_root().unwrap(), root);
    // A box lives long: documents signed a year later still verify.
    let later = issued_at + 365 * 24 * 3600 * 1000;
    let doc = inside.attest(&nitrotpm_request(), later).unwrap();
    let policy = Policy {
        root: &root,
        at_ms: later,
        expected_pcrs: BTreeMap::from([(4, nitrotpm_request().pcrs[&4].clone())]),
        nonce: Some(vec![9; 32]),
        max_age_ms: Some(60_000),
        allow_debug: false,
        kind: Some(DocumentKind::NitroTpm),
    };
    let verified = verify(&doc, &policy, None).unwrap();
    assert_eq!(verified.document.module_id, "local-box-tpm");
    // Another state_dir's root does not accept it.
    let other = tempfile::tempdir().unwrap();
    let other_root = SimulatedNitro::open_or_create(other.path())
        .unwrap()
        .trust_root()
        .unwrap();
    assert!(matches!(
        verify(
            &doc,
            &Policy {
                root: &other_root,
                ..policy.clone()
            },
            None
        ),
        Err(AttestationError::UntrustedRoot { .. })
    ));

    for (bundle, complaint) in [
        (
            pem.replace("PRIVATE KEY", "PUBLIC KEY"),
            "does not start with a PRIVATE KEY",
        ),
        (
            pem.split("-----BEGIN CERTIFICATE-----").next().unwrap().to_owned(),
            "holds 0 certificate",
        ),
        (String::new(), "does not start with a PRIVATE KEY"),
    ] {
        let err = SimulatedLeaf::from_pem(&bundle).unwrap_err();
        assert!(err.to_string().contains(complaint), "{err}");
    }
}
