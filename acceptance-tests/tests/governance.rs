//! Governed writes against the real Terraform: a 2-of-3 auditor policy over image publishing,
//! approvals signed with plain openssl and with `safebox approve`, what does not count, policy
//! rotation that needs the old quorum, expiry, and the audit log verified offline.

use std::process::Command;

use safebox_acceptance_tests::governed::{
    approve, audit_verify, image, openssl_approve, planned_change, rule, workspace, PROVIDER,
};
use safebox_acceptance_tests::{assert_refused, built_binary, mentions, resource_values, text};
use serde_json::Value;
use sha2::Digest as _;

/// The fixture policy with a 2-of-2 auditor rule for image.publish, `extra_rules` and `extra`.
fn policy(extra_rules: &str, extra: &str) -> String {
    safebox_acceptance_tests::governed::policy(
        &format!("{}{extra_rules}", rule("image.publish", 2, r#"["auditor"]"#)),
        extra,
    )
}

/// The example image, governed by `safebox_policy.gov`.
fn governed_image(name: &str) -> String {
    image(name, "policy_id         = safebox_policy.gov.id")
}

#[test]
fn two_of_three_auditors_with_openssl_and_safebox_signatures_and_an_audit_log() {
    let mut ws = workspace();
    ws.write_config(PROVIDER, &policy("", ""));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.write_config(PROVIDER, &format!("{}{}", policy("", ""), governed_image("data-box")));

    // No approvals: the plan says what is missing; apply refuses.
    let (digest, status, output) = planned_change(&mut ws, "safebox_image.app");
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        status,
        "0 of 2 for image.publish; missing role auditor: 2 more (auditor-a, auditor-b)"
    );
    assert!(
        mentions(&output, "Approvals missing for image.publish") && mentions(&output, &digest),
        "{output}"
    );
    let refused = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(
        &refused,
        &["image.publish is not approved", &digest, "Signed by: nobody"],
    );

    // What does not count: the same signer twice, a signer of another role, another digest,
    // another action, a corrupted signature.
    openssl_approve(&ws, "auditor-a", "image.publish", &digest, "a1.json");
    approve(&ws, "auditor-a", "image.publish", &digest, "a2.json");
    approve(&ws, "auditor-c", "image.publish", &digest, "c.json");
    approve(
        &ws,
        "auditor-b",
        "image.publish",
        &format!("sha256:{}", "0".repeat(64)),
        "b-other.json",
    );
    approve(&ws, "auditor-b", "enclave.deploy", &digest, "b-action.json");
    let (_, status, _) = planned_change(&mut ws, "safebox_image.app");
    assert!(
        status.starts_with("1 of 2 for image.publish; missing role auditor: 1 more (auditor-b)"),
        "{status}"
    );
    assert!(status.contains("auditor-c has role \"security\""), "{status}");
    let refused = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(&refused, &["image.publish is not approved", "Signed by: auditor-a"]);

    openssl_approve(&ws, "auditor-b", "image.publish", &digest, "b.json");
    let mut corrupted: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path().join("approvals/b.json")).unwrap()).unwrap();
    let good_signature = corrupted["signature"].as_str().unwrap().to_owned();
    corrupted["signature"] = Value::String(good_signature.replacen(|c: char| c.is_ascii_alphabetic(), "0", 2));
    std::fs::write(ws.path().join("approvals/b.json"), corrupted.to_string()).unwrap();
    let (_, status, _) = planned_change(&mut ws, "safebox_image.app");
    assert!(
        status.contains("the signature of auditor-b does not verify"),
        "{status}"
    );

    // Two valid approvals from the two auditors: apply goes through and is logged.
    openssl_approve(&ws, "auditor-b", "image.publish", &digest, "b.json");
    let (_, status, _) = planned_change(&mut ws, "safebox_image.app");
    assert!(
        status.starts_with("2 of 2 for image.publish; approved by auditor-a, auditor-b"),
        "{status}"
    );
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.plan_is_empty().unwrap();

    let document = resource_values(&ws.state(), "safebox_policy.gov").unwrap()["document"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(ws.path().join("policy.json"), &document).unwrap();
    let verified = audit_verify(&ws, &["--policy", ws.path().join("policy.json").to_str().unwrap()]);
    assert!(verified.status.success(), "{}", text(&verified));
    // The policy's creation, then the publication.
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("2 entries verified"),
        "{}",
        text(&verified)
    );

    // One changed byte in the log is found and the entry named.
    let log = ws.state_dir().join("audit.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes.windows(10).position(|w| w == b"\"data-box\"").unwrap_or(40) + 2;
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    std::fs::write(&log, &bytes).unwrap();
    let broken = audit_verify(&ws, &[]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        mentions(&text(&broken), "entry 1 of the audit log is broken"),
        "{}",
        text(&broken)
    );

    // The status command tells an auditor the same thing the plan does.
    let status = Command::new(built_binary("safebox"))
        .args([
            "approvals",
            "status",
            "--policy",
            ws.path().join("policy.json").to_str().unwrap(),
            "--action",
            "image.publish",
            "--digest",
            &digest,
            "--dir",
        ])
        .arg(ws.path().join("approvals"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("approved:  auditor-a, auditor-b"),
        "{}",
        text(&status)
    );
}

#[test]
fn rotating_a_policy_needs_the_old_quorum_and_the_new_one() {
    let update_rule =
        "rule {\n    action    = \"policy.update\"\n    threshold = 2\n    roles     = [\"auditor\"]\n  }";
    let mut ws = workspace();
    ws.write_config(PROVIDER, &policy(update_rule, ""));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);

    // The new policy promotes auditor-c to auditor: a rotation.
    let rotated = policy(update_rule, "").replacen("role           = \"security\"", "role           = \"auditor\"", 1);
    ws.write_config(PROVIDER, &rotated);
    let (digest, status, _) = planned_change(&mut ws, "safebox_policy.gov");
    assert!(
        status.contains("policy customer-data (in force): 0 of 2 for policy.update")
            && status.matches("0 of 2").count() == 2,
        "{status}"
    );

    // The new quorum alone (auditor-c and auditor-a are auditors in the new policy) is not
    // enough: auditor-c is not an auditor in the old one.
    approve(&ws, "auditor-c", "policy.update", &digest, "c.json");
    approve(&ws, "auditor-a", "policy.update", &digest, "a.json");
    let refused = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(
        &refused,
        &[
            "policy.update is not approved",
            "policy customer-data (in force): 1 of 2",
        ],
    );

    approve(&ws, "auditor-b", "policy.update", &digest, "b.json");
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let state = ws.state();
    assert_eq!(resource_values(&state, "safebox_policy.gov").unwrap()["version"], 2);
    ws.plan_is_empty().unwrap();

    // Deleting it is governed too, by the now current policy.
    let out = ws.terraform(&["plan", "-destroy", "-input=false", "-no-color"]);
    let output = text(&out).split_whitespace().collect::<Vec<_>>().join(" ");
    let marker = "is policy.update with change digest ";
    let at = output.find(marker).unwrap_or_else(|| panic!("{output}")) + marker.len();
    let delete_digest: String = output[at..].chars().take(71).collect();
    let refused = ws.terraform(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(
        &refused,
        &["policy.update is not approved", &delete_digest, "Signed by: nobody"],
    );
    approve(&ws, "auditor-a", "policy.update", &delete_digest, "del-a.json");
    approve(&ws, "auditor-c", "policy.update", &delete_digest, "del-c.json");
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    let verified = audit_verify(&ws, &[]);
    assert!(verified.status.success(), "{}", text(&verified));
    // Creation, rotation, deletion.
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("3 entries verified"),
        "{}",
        text(&verified)
    );
}

#[test]
fn an_expired_policy_refuses_governed_changes_and_says_how_to_renew() {
    let mut ws = workspace();
    ws.write_config(PROVIDER, &policy("", "expires_at = \"2020-01-01T00:00:00Z\""));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.write_config(
        PROVIDER,
        &format!(
            "{}{}",
            policy("", "expires_at = \"2020-01-01T00:00:00Z\""),
            governed_image("data-box")
        ),
    );
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(
        &out,
        &[
            "Policy expired",
            "expired at 2020-01-01T00:00:00Z",
            "set a later expires_at",
        ],
    );
}

#[test]
fn a_policy_without_a_rule_for_the_action_fails_closed_at_plan() {
    let mut ws = workspace();
    let no_publish_rule = policy("", "").replace("action    = \"image.publish\"", "action    = \"link.create\"");
    ws.write_config(PROVIDER, &no_publish_rule);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.write_config(PROVIDER, &format!("{no_publish_rule}{}", governed_image("data-box")));
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["has no rule for image.publish"]);

    // A box named into the policy, of an image made in the same run: refused at plan too,
    // before the image is built.
    let boxed = format!(
        "{no_publish_rule}{}resource \"safebox_enclave\" \"box\" {{\n  image_id  = safebox_image.app.id\n  policy_id = safebox_policy.gov.id\n}}\n",
        image("data-box", "")
    );
    ws.write_config(PROVIDER, &boxed);
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["No rule for this change", "has no rule for enclave.deploy"]);
}

#[test]
fn deploying_a_box_and_linking_it_need_their_own_approvals() {
    let rules = "rule {\n    action    = \"enclave.deploy\"\n    threshold = 1\n    roles     = [\"auditor\"]\n  }\n  rule {\n    action    = \"link.create\"\n    threshold = 1\n    roles     = [\"security\"]\n  }";
    let mut ws = workspace();
    let provider = PROVIDER;
    let ungoverned_image = image("data-box", "");
    ws.write_config(provider, &format!("{}{ungoverned_image}", policy(rules, "")));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);

    let boxes = "resource \"safebox_enclave\" \"a\" {\n  image_id  = safebox_image.app.id\n  policy_id = safebox_policy.gov.id\n}\nresource \"safebox_enclave\" \"b\" {\n  image_id  = safebox_image.app.id\n  cpu_count = 1\n  policy_id = safebox_policy.gov.id\n}\n";
    ws.write_config(provider, &format!("{}{ungoverned_image}{boxes}", policy(rules, "")));
    let (digest_a, status, _) = planned_change(&mut ws, "safebox_enclave.a");
    let (digest_b, _, _) = planned_change(&mut ws, "safebox_enclave.b");
    assert!(status.starts_with("0 of 1 for enclave.deploy"), "{status}");
    assert_ne!(digest_a, digest_b, "each deployment has its own digest");
    let refused = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(&refused, &["enclave.deploy is not approved", "Signed by: nobody"]);
    approve(&ws, "auditor-a", "enclave.deploy", &digest_a, "deploy-a.json");
    approve(&ws, "auditor-b", "enclave.deploy", &digest_b, "deploy-b.json");
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.plan_is_empty().unwrap();

    let link = "resource \"safebox_attested_link\" \"ab\" {\n  a_enclave_id = safebox_enclave.a.id\n  b_enclave_id = safebox_enclave.b.id\n  policy_id    = safebox_policy.gov.id\n}\n";
    ws.write_config(
        provider,
        &format!("{}{ungoverned_image}{boxes}{link}", policy(rules, "")),
    );
    let (digest, status, _) = planned_change(&mut ws, "safebox_attested_link.ab");
    assert!(
        status.starts_with("0 of 1 for link.create; missing role security: 1 more (auditor-c)"),
        "{status}"
    );
    // An auditor's approval does not count: the rule names the security role.
    approve(&ws, "auditor-a", "link.create", &digest, "link-a.json");
    let refused = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(
        &refused,
        &["link.create is not approved", &digest, "auditor-a has role \"auditor\""],
    );
    approve(&ws, "auditor-c", "link.create", &digest, "link-c.json");
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.plan_is_empty().unwrap();
    let verified = audit_verify(&ws, &[]);
    assert!(verified.status.success(), "{}", text(&verified));
    // The policy's creation, two deployments, the link.
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("4 entries verified"),
        "{}",
        text(&verified)
    );
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
}

#[test]
fn strangers_and_broken_files_do_not_count_while_p384_and_inline_approvals_do() {
    // Two of auditors and security together, under a policy that expires in ten days.
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(10))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let gov = safebox_acceptance_tests::governed::policy(
        &rule("image.publish", 2, r#"["auditor", "security"]"#),
        &format!("expires_at = \"{expires}\""),
    );
    let mut ws = workspace();
    ws.write_config(PROVIDER, &gov);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let state = ws.state();
    let values = resource_values(&state, "safebox_policy.gov").unwrap();
    let document = values["document"].as_str().unwrap();
    let expected = format!("sha256:{}", hex::encode(sha2::Sha256::digest(document.as_bytes())));
    assert_eq!(
        values["digest"],
        expected.as_str(),
        "the digest is SHA-256 of the document shown"
    );

    ws.write_config(PROVIDER, &format!("{gov}{}", governed_image("data-box")));
    let (digest, _, output) = planned_change(&mut ws, "safebox_image.app");
    assert!(
        mentions(&output, "Policy expires soon") && mentions(&output, &format!("expires at {expires}")),
        "the plan warns, in RFC 3339, that the policy expires soon:\n{output}"
    );

    // A signer the policy does not name (with a real key and a valid signature), and a file
    // that is not an approval: neither counts, and the plan says why.
    let stranger = ws.path().join("approvals/stranger.json");
    approve(&ws, "auditor-a", "image.publish", &digest, "stranger.json");
    let mut forged: Value = serde_json::from_str(&std::fs::read_to_string(&stranger).unwrap()).unwrap();
    forged["signer"] = Value::String("auditor-z".into());
    std::fs::write(&stranger, forged.to_string()).unwrap();
    std::fs::write(ws.path().join("approvals/broken.json"), "{\"signer\": \"auditor-b\", ").unwrap();
    let (_, status, output) = planned_change(&mut ws, "safebox_image.app");
    assert!(
        status.starts_with("0 of 2 for image.publish")
            && status.contains("\"auditor-z\" is not a signer of policy \"customer-data\""),
        "{status}"
    );
    assert!(
        mentions(&output, "Approvals files passed over") && mentions(&output, "broken.json"),
        "{output}"
    );

    // auditor-c signs its P-384 key with plain `openssl dgst -sha384`: it counts.
    openssl_approve(&ws, "auditor-c", "image.publish", &digest, "c.json");
    let (_, status, _) = planned_change(&mut ws, "safebox_image.app");
    assert!(status.starts_with("1 of 2 for image.publish"), "{status}");
    let refused = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(&refused, &["image.publish is not approved", "Signed by: auditor-c"]);

    // auditor-a's approval given inline in the resource, not as a file, makes two.
    approve(&ws, "auditor-a", "image.publish", &digest, "a.json");
    let inline: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path().join("approvals/a.json")).unwrap()).unwrap();
    std::fs::remove_file(ws.path().join("approvals/a.json")).unwrap();
    let approvals = format!(
        "policy_id = safebox_policy.gov.id\n  approvals = [{{\n    signer    = {}\n    action    = {}\n    digest    = {}\n    signature = {}\n  }}]",
        inline["signer"], inline["action"], inline["digest"], inline["signature"]
    );
    ws.write_config(PROVIDER, &format!("{gov}{}", image("data-box", &approvals)));
    let (same, status, _) = planned_change(&mut ws, "safebox_image.app");
    assert_eq!(same, digest, "approvals are not part of the change they approve");
    assert!(status.starts_with("2 of 2 for image.publish; approved by "), "{status}");
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let state = ws.state();
    let approved = resource_values(&state, "safebox_image.app").unwrap()["approval_status"]
        .as_str()
        .unwrap()
        .to_owned();
    let (counted, passed_over) = approved.split_once("; not counted: ").unwrap_or((&approved, ""));
    assert!(
        counted.starts_with("2 of 2 for image.publish; approved by ")
            && counted.contains("auditor-a")
            && counted.contains("auditor-c")
            && !counted.contains("auditor-z")
            && passed_over.contains("\"auditor-z\" is not a signer"),
        "{approved}"
    );
    ws.plan_is_empty().unwrap();
}
