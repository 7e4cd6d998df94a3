//! `safebox_policy` against the real Terraform: the user's journey from create to destroy,
//! and every validation error a user can make.

use safebox_acceptance_tests::{
    assert_refused, attr_equals, attr_matches, mentions, run, text, Action, Step, Workspace,
};
use serde_json::json;

const ADDRESS: &str = "safebox_policy.gov";

fn keys() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys");
    [
        "auditor-a.pub.pem",
        "auditor-b.pub.pem",
        "auditor-c.pub.pem",
        "auditor-a.key.pem",
        "p521.pub.pem",
    ]
    .iter()
    .map(|name| {
        (
            format!("keys/{name}"),
            std::fs::read(format!("{dir}/{name}")).expect("fixture key"),
        )
    })
    .collect()
}

/// A policy of three auditors; `rules` and `extra` are spliced in.
fn policy(name: &str, rules: &str, extra: &str) -> String {
    format!(
        r#"
resource "safebox_policy" "gov" {{
  name = "{name}"
  {extra}
  signer {{
    id             = "auditor-a"
    role           = "auditor"
    public_key_pem = file("keys/auditor-a.pub.pem")
  }}
  signer {{
    id             = "auditor-b"
    role           = "auditor"
    public_key_pem = file("keys/auditor-b.pub.pem")
  }}
  signer {{
    id             = "auditor-c"
    role           = "security"
    public_key_pem = file("keys/auditor-c.pub.pem")
  }}
  {rules}
}}
"#
    )
}

fn rule(action: &str, threshold: i64, roles: &str) -> String {
    format!("rule {{\n    action    = \"{action}\"\n    threshold = {threshold}\n    roles     = {roles}\n  }}")
}

fn is_digest(s: &str) -> bool {
    s.len() == 71 && s.starts_with("sha256:") && s[7..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn create_update_rename_import_destroy() {
    let two_of_two = rule("enclave.deploy", 2, r#"["auditor"]"#);
    let with_security = format!(
        "{}\n  {}",
        rule("enclave.deploy", 3, r#"["auditor", "security"]"#),
        rule("link.create", 1, r#"["security"]"#)
    );
    run(vec![
        Step {
            files: keys(),
            config: policy("customer-data", &two_of_two, ""),
            plan: vec![(ADDRESS, Action::Create)],
            // Auditors see the document and its digest before anything is applied.
            plan_checks: vec![
                attr_matches(ADDRESS, "/digest", "a sha256 digest", is_digest),
                attr_equals(ADDRESS, "/version", json!(1)),
                attr_matches(ADDRESS, "/document", "the canonical document", |d| {
                    d.starts_with("{\"expires_at\":null,\"name\":\"customer-data\",\"rules\":[{\"action\":\"enclave.deploy\",\"roles\":[\"auditor\"],\"threshold\":2}]")
                }),
            ],
            checks: vec![
                attr_matches(ADDRESS, "/id", "a policy id", |id| id.starts_with("pol-")),
                attr_equals(ADDRESS, "/version", json!(1)),
                attr_matches(ADDRESS, "/digest", "a sha256 digest", is_digest),
            ],
            import: Some(ADDRESS),
            ..Step::default()
        },
        Step {
            config: policy(
                "customer-data",
                &with_security,
                r#"expires_at = "2030-01-01T00:00:00Z""#,
            ),
            plan: vec![(ADDRESS, Action::Update)],
            plan_checks: vec![attr_equals(ADDRESS, "/version", json!(2))],
            checks: vec![
                attr_equals(ADDRESS, "/version", json!(2)),
                attr_matches(ADDRESS, "/document", "a document with both rules and the expiry", |d| {
                    d.contains("\"link.create\"")
                        && d.contains("\"expires_at\":\"2030-01-01T00:00:00Z\"")
                        && d.contains("\"version\":2")
                }),
            ],
            import: Some(ADDRESS),
            ..Step::default()
        },
        Step {
            // A rename is a change of the policy, in place: the same id, the next version.
            config: policy(
                "customer-data-v2",
                &with_security,
                r#"expires_at = "2030-01-01T00:00:00Z""#,
            ),
            plan: vec![(ADDRESS, Action::Update)],
            checks: vec![
                attr_equals(ADDRESS, "/version", json!(3)),
                attr_equals(ADDRESS, "/name", json!("customer-data-v2")),
            ],
            ..Step::default()
        },
    ]);
}

#[test]
fn reordering_blocks_changes_nothing() {
    let a = rule("enclave.deploy", 1, r#"["auditor"]"#);
    let b = rule("link.create", 1, r#"["security"]"#);
    run(vec![
        Step {
            files: keys(),
            config: policy("p", &format!("{a}\n  {b}"), ""),
            plan: vec![(ADDRESS, Action::Create)],
            ..Step::default()
        },
        Step {
            // Signers and rules are sets: another block order is the same policy, and the
            // plan is empty.
            config: policy("p", &format!("{b}\n  {a}"), ""),
            plan: vec![(ADDRESS, Action::NoOp)],
            checks: vec![attr_equals(ADDRESS, "/version", json!(1))],
            ..Step::default()
        },
    ]);
}

fn expect_error(config: String, needles: Vec<&'static str>) -> Step {
    Step {
        files: keys(),
        config,
        expect_error: needles,
        ..Step::default()
    }
}

#[test]
fn every_validation_error_names_its_attribute() {
    let ok_rule = rule("enclave.deploy", 1, r#"["auditor"]"#);
    let signer_pair = |a: &str, b: &str| {
        format!(
            r#"
resource "safebox_policy" "gov" {{
  name = "p"
  signer {{
    id   = "auditor-a"
    role = "auditor"
    {a}
  }}
  signer {{
    id   = "auditor-b"
    role = "auditor"
    {b}
  }}
  {ok_rule}
}}
"#
        )
    };
    let key_a = r#"public_key_pem = file("keys/auditor-a.pub.pem")"#;
    let key_b = r#"public_key_pem = file("keys/auditor-b.pub.pem")"#;
    let mut ws = Workspace::new();
    let steps = vec![
        expect_error(
            policy("p", &rule("enclave.deploy", 0, r#"["auditor"]"#), ""),
            vec!["rule \"enclave.deploy\" threshold", "between 1 and 2"],
        ),
        expect_error(
            policy("p", &rule("enclave.deploy", 3, r#"["auditor"]"#), ""),
            vec!["rule \"enclave.deploy\" threshold", "2 signer(s)"],
        ),
        expect_error(
            policy("p", &rule("enclave.deploy", 1, r#"["reviewer"]"#), ""),
            vec![
                "rule \"enclave.deploy\" roles[0]",
                "no signer has role \"reviewer\"",
                "auditor, security",
            ],
        ),
        expect_error(
            policy("p", &rule("image.pubish", 1, r#"["auditor"]"#), ""),
            vec!["rule.action", "\"image.publish\""],
        ),
        expect_error(
            policy(
                "p",
                &format!("{ok_rule}\n  {}", rule("enclave.deploy", 2, r#"["auditor"]"#)),
                "",
            ),
            vec!["rule \"enclave.deploy\" action", "two rule blocks for enclave.deploy"],
        ),
        expect_error(
            policy("p", &ok_rule, r#"expires_at = "next tuesday""#),
            vec!["expires_at", "RFC 3339"],
        ),
        expect_error(
            policy("p", &ok_rule, r#"name = """#).replace("name = \"p\"\n", ""),
            vec!["name", "must not be empty"],
        ),
        expect_error(
            signer_pair(key_a, key_a),
            vec![
                "signer \"auditor-b\" public_key_pem",
                "same public key as signer \"auditor-a\"",
            ],
        ),
        expect_error(
            signer_pair(key_a, r#"public_key_pem = "not a key""#),
            vec!["signer \"auditor-b\" public_key_pem", "BEGIN PUBLIC KEY"],
        ),
        expect_error(
            signer_pair(key_a, r#"public_key_pem = file("keys/auditor-a.key.pem")"#),
            vec!["signer \"auditor-b\" public_key_pem", "private key", "-pubout"],
        ),
        expect_error(
            signer_pair(key_a, r#"public_key_pem = file("keys/p521.pub.pem")"#),
            vec!["signer \"auditor-b\" public_key_pem", "ECDSA P-384"],
        ),
        expect_error(
            signer_pair(key_a, ""),
            vec!["signer \"auditor-b\" public_key_pem", "has no key"],
        ),
        expect_error(
            signer_pair(key_a, &format!("{key_b}\n    kms_key_id = \"alias/x\"")),
            vec!["signer \"auditor-b\" kms_key_id", "set exactly one"],
        ),
        expect_error(
            signer_pair(key_a, key_b).replace("id   = \"auditor-b\"", "id   = \"auditor-a\""),
            vec!["signer \"auditor-a\" id", "used by two signer blocks"],
        ),
        expect_error(
            signer_pair(key_a, r#"kms_key_id = "alias/auditor""#),
            vec![
                "signer \"auditor-b\" kms_key_id",
                "cannot read the KMS key",
                "public_key_pem",
            ],
        ),
    ];
    for (index, step) in steps.into_iter().enumerate() {
        for (path, content) in &step.files {
            ws.write_file(path, content);
        }
        ws.write_config("", &step.config);
        let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
        eprintln!("case {index}");
        assert_refused(&out, &step.expect_error);
    }
}

#[test]
fn provider_configuration_errors() {
    let config = policy("p", &rule("enclave.deploy", 1, r#"["auditor"]"#), "");
    run(vec![
        Step {
            files: keys(),
            provider: "  backend = \"aws\"".into(),
            config: config.clone(),
            expect_error: vec!["aws backend needs a region", "AWS_REGION"],
            ..Step::default()
        },
        Step {
            provider: "  backend = \"aws\"\n  region = \"eu-west-1\"\n  endpoints {\n    ebs = \"127.0.0.1:5000\"\n  }"
                .into(),
            config: config.clone(),
            expect_error: vec!["endpoints.ebs", "http://127.0.0.1:5000"],
            ..Step::default()
        },
        Step {
            provider: "  backend = \"gcp\"".into(),
            config: config.clone(),
            expect_error: vec!["backend must be one of \"local\", \"aws\""],
            ..Step::default()
        },
        Step {
            provider: "  attestation {\n    max_age = \"soon\"\n  }".into(),
            config: config.clone(),
            expect_error: vec!["attestation.max_age", "\"10m\""],
            ..Step::default()
        },
        Step {
            provider: "  attestation {\n    trust_root_pem = \"hello\"\n  }".into(),
            config,
            expect_error: vec!["attestation.trust_root_pem", "BEGIN CERTIFICATE"],
            ..Step::default()
        },
    ]);
}

#[test]
fn a_deleted_record_is_drift_and_is_created_again() {
    let config = policy("p", &rule("enclave.deploy", 1, r#"["auditor"]"#), "");
    let mut ws = Workspace::new();
    for (path, content) in keys() {
        ws.write_file(&path, &content);
    }
    ws.write_config("", &config);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let records = ws.state_dir().join("policies");
    for entry in std::fs::read_dir(&records).expect("policy records") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove record");
    }
    let out = ws.terraform(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(mentions(&output, "will be created"), "{output}");
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.plan_is_empty().unwrap();
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}

#[test]
fn importing_an_unknown_or_malformed_id_says_what_is_wrong() {
    let mut ws = Workspace::new();
    for (path, content) in keys() {
        ws.write_file(&path, &content);
    }
    ws.write_config("", &policy("p", &rule("enclave.deploy", 1, r#"["auditor"]"#), ""));
    let missing = ws.terraform(&["import", "-input=false", "-no-color", ADDRESS, "pol-0000000000000000"]);
    assert_refused(&missing, &["no policies record with id \"pol-0000000000000000\""]);
    let traversal = ws.terraform(&["import", "-input=false", "-no-color", ADDRESS, "../../etc/passwd"]);
    assert_refused(&traversal, &["is not a valid policies id"]);
}

#[test]
fn a_rolled_back_or_unreadable_record_is_refused_with_the_way_back() {
    let mut ws = Workspace::new();
    for (path, content) in keys() {
        ws.write_file(&path, &content);
    }
    let deploy = rule("enclave.deploy", 1, r#"["auditor"]"#);
    ws.write_config("", &policy("p", &deploy, ""));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let record = std::fs::read_dir(ws.state_dir().join("policies"))
        .expect("policy records")
        .next()
        .expect("one record")
        .expect("entry")
        .path();
    let first = std::fs::read(&record).expect("record");

    // Version 2 (an ungoverned change), then an old copy of the record put back.
    ws.write_config("", &policy("p", &deploy, r#"expires_at = "2030-01-01T00:00:00Z""#));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let second = std::fs::read(&record).expect("record");
    std::fs::write(&record, &first).expect("roll back");
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(
        &out,
        &[
            "Policy rollback detected",
            "version 1",
            "older than the version 2",
            "restore the current one",
        ],
    );

    // A record that is no longer JSON.
    std::fs::write(&record, &second[..second.len() / 2]).expect("truncate");
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["Unreadable resource record"]);

    // The current record restored: nothing to do.
    std::fs::write(&record, &second).expect("restore");
    ws.plan_is_empty().unwrap();
}
