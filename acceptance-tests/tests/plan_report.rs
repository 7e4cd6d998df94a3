//! `safebox plan-report` on plans the real Terraform produced: the quickstart (images, inputs,
//! boxes, link, policy, simulated attestation), and the auditor's walk through a governed
//! change: plan -out, the report with and without the saved plan and the approvals, sign,
//! apply the saved plan, then a policy update read before → after, with the audit head to
//! check and HTML that stays inert.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use safebox_acceptance_tests::{built_binary, resource_values, text, Workspace};
use serde_json::Value;
use sha2::Digest as _;

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/keys")
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/resources/safebox_image")
}

/// `safebox plan-report ARGS…` run in the workspace; its standard output.
fn report(ws: &Workspace, args: &[&str]) -> String {
    let out = Command::new(built_binary("safebox"))
        .arg("plan-report")
        .args(args)
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `terraform plan -out=plan.out` then `terraform show -json plan.out > plan.json`.
fn save_plan(ws: &mut Workspace) -> Value {
    ws.terraform_ok(&["plan", "-out=plan.out", "-input=false", "-no-color"]);
    let json = ws.terraform_ok(&["show", "-json", "plan.out"]);
    std::fs::write(ws.path().join("plan.json"), &json).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn sha256_of(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The row of the Markdown table whose first cell is `address`, under the heading `section`.
fn row<'a>(md: &'a str, section: &str, address: &str) -> &'a str {
    let start = md
        .find(&format!("## {section}\n"))
        .unwrap_or_else(|| panic!("no section {section}:\n{md}"));
    let body = &md[start..];
    let end = body[3..].find("\n## ").map_or(body.len(), |e| e + 3);
    body[..end]
        .lines()
        .find(|l| l.starts_with(&format!("| {address} |")))
        .unwrap_or_else(|| panic!("no row for {address} in {section}:\n{md}"))
}

/// Every row of the Markdown table under `section` whose first cell is `address`.
fn rows<'a>(md: &'a str, section: &str, address: &str) -> Vec<&'a str> {
    let start = md.find(&format!("## {section}\n")).unwrap();
    let body = &md[start..];
    let end = body[3..].find("\n## ").map_or(body.len(), |e| e + 3);
    body[..end]
        .lines()
        .filter(|l| l.starts_with(&format!("| {address} |")))
        .collect()
}

#[test]
fn the_quickstart_plan_reads_as_an_auditor_needs_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    let mut ws = Workspace::from_tree(
        &root,
        &["examples", "modules"],
        Path::new("examples/quickstart"),
        ".safebox",
    );
    let plan = save_plan(&mut ws);
    let data = resource_values(&plan, "safebox_image.data").unwrap();

    let md = report(&ws, &["plan.json", "--format", "markdown"]);
    assert!(md.starts_with("# Safebox plan report"), "{md}");
    for needle in [
        "## Images",
        "safebox_image.data",
        "safebox_image.model",
        data["prod_measurements"]["pcr0"].as_str().unwrap(),
        data["manifest_sha256"].as_str().unwrap(),
        "## Boxes",
        "safebox_enclave.data",
        "## Attested links",
        "safebox_attested_link.data_to_model",
        "## Governance policies",
        "customer-data",
        "enclave.deploy: 2 of auditor",
        "**simulated** attestation root",
    ] {
        assert!(md.contains(needle), "the report lacks {needle:?}:\n{md}");
    }
    // Nothing is governed: the boxes and the link inherit no policy from their images.
    assert!(
        md.contains("## Governed changes\n\nNo governed change in this plan."),
        "{md}"
    );
    // Without the saved plan, the report says it is of the JSON only, and which JSON.
    let json_sha256 = sha256_of(&ws.path().join("plan.json"));
    assert!(
        md.contains("**This report is of the JSON only**") && md.contains(&json_sha256),
        "{md}"
    );
    // The model image's inputs, each with its digest; it has no SSH access.
    let weights = rows(&md, "Image inputs", "safebox_image.model")
        .into_iter()
        .find(|r| r.contains("layer 2: weights"))
        .unwrap_or_else(|| panic!("no weights layer:\n{md}"));
    assert!(
        weights.contains("inputs/weights.bin")
            && weights.contains("f35fbbc4b551e003faa40a511938180a9e8e493d7da2131eb307e7b76029745e")
            && weights.contains("/model/weights.bin"),
        "{weights}"
    );
    assert!(rows(&md, "SSH access (development images)", "safebox_image.model").is_empty());
    assert_eq!(
        rows(&md, "SSH access (development images)", "safebox_image.data").len(),
        1
    );

    let html = report(&ws, &["plan.json", "--format", "html"]);
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("<table>") && html.contains("<strong>simulated</strong>"),
        "{html}"
    );
    assert!(!html.contains("<script"), "self-contained and inert");
    assert!(html.contains(data["prod_measurements"]["pcr0"].as_str().unwrap()));
}

/// A policy over auditor-a and auditor-b; `extra` is added inside the block.
fn policy(name: &str, extra: &str, publish_threshold: u32) -> String {
    let k = keys_dir();
    format!(
        r#"resource "safebox_policy" "gov" {{
  name = {name:?}
  signer {{
    id             = "auditor-a"
    role           = "auditor"
    public_key_pem = file("{k}/auditor-a.pub.pem")
  }}
  signer {{
    id             = "auditor-b"
    role           = "auditor"
    public_key_pem = file("{k}/auditor-b.pub.pem")
  }}
  rule {{
    action    = "image.publish"
    threshold = {publish_threshold}
    roles     = ["auditor"]
  }}
  rule {{
    action    = "enclave.deploy"
    threshold = 1
    roles     = ["auditor"]
  }}
  rule {{
    action    = "policy.update"
    threshold = 1
    roles     = ["auditor"]
  }}
{extra}}}
"#,
        k = k.display()
    )
}

/// The example image, governed by the policy.
fn governed_image() -> String {
    let main = std::fs::read_to_string(example_dir().join("main.tf")).unwrap();
    let image = &main[main.find("resource \"safebox_image\"").unwrap()..main.find("output \"prod_pcr0\"").unwrap()];
    image.replacen(
        "source_date_epoch",
        "policy_id         = safebox_policy.gov.id\n  source_date_epoch",
        1,
    )
}

fn approve(ws: &Workspace, signer: &str, action: &str, digest: &str, out: &Path) {
    let done = Command::new(built_binary("safebox"))
        .args([
            "approve",
            "--key",
            keys_dir().join(format!("{signer}.key.pem")).to_str().unwrap(),
            "--signer",
            signer,
            "--action",
            action,
            "--digest",
            digest,
            "--out",
        ])
        .arg(out)
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(done.status.success(), "{}", text(&done));
}

/// OpenSSH's `SHA256:` fingerprint of the first key in an authorized_keys text.
fn ssh_fingerprint(authorized: &str) -> String {
    let blob = authorized.split_whitespace().nth(1).unwrap();
    let der = base64::engine::general_purpose::STANDARD.decode(blob).unwrap();
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(der))
    )
}

const PROVIDER: &str = "  approvals_dir = \"approvals\"\n  attestation {\n    allow_simulated = true\n  }";

#[test]
fn governed_changes_show_their_digest_policy_inputs_and_what_is_missing() {
    let mut ws = Workspace::new();
    for name in [
        "inputs/bzImage",
        "inputs/init.tar",
        "inputs/app.bin",
        "inputs/sshd",
        "keys/operator.pub",
    ] {
        ws.write_file(name, std::fs::read(example_dir().join(name)).unwrap());
    }
    let approvals = ws.path().join("approvals");
    std::fs::create_dir_all(&approvals).unwrap();
    ws.write_config(PROVIDER, &policy("p", "", 1));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let policy_id = resource_values(&ws.state(), "safebox_policy.gov").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // 1. The operator saves a plan that publishes a governed image.
    ws.write_config(PROVIDER, &format!("{}{}", policy("p", "", 1), governed_image()));
    let plan = save_plan(&mut ws);
    let image = resource_values(&plan, "safebox_image.app").unwrap();
    let digest = image["change_digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // Without --approvals the status is not guessed; the governing policy and the action are
    // named; the report is of the saved plan whose SHA-256 the auditor signs off.
    let md = report(&ws, &["plan.json", "--plan-file", "plan.out"]);
    let governed = row(&md, "Governed changes", "safebox_image.app");
    assert!(
        governed.starts_with(&format!(
            "| safebox_image.app | create | image.publish | p (safebox_policy.gov, {policy_id}, version 1, sha256:"
        )) && governed.contains(&format!(
            "| {digest} | not known until apply: approvals may still arrive"
        )),
        "{governed}"
    );
    assert!(
        !governed.contains("of 1 for"),
        "no count without --approvals: {governed}"
    );
    let plan_sha256 = sha256_of(&ws.path().join("plan.out"));
    assert!(
        md.contains(&format!("Saved plan `plan.out`, SHA-256 `{plan_sha256}`")),
        "the report names the saved plan's SHA-256 {plan_sha256}:\n{md}"
    );
    assert!(!md.contains("This report is of the JSON only"), "{md}");

    // The inputs before apply: kernel, each layer, sshd, the manifest, and the SSH keys.
    let inputs = rows(&md, "Image inputs", "safebox_image.app").join("\n");
    for (what, source, sha256) in [
        ("kernel", "inputs/bzImage", image["kernel"]["sha256"].as_str().unwrap()),
        (
            "layer 1: init",
            "inputs/init.tar",
            image["layer"][0]["sha256"].as_str().unwrap(),
        ),
        (
            "layer 2: app",
            "inputs/app.bin",
            image["layer"][1]["sha256"].as_str().unwrap(),
        ),
        (
            "sshd (development image only)",
            "inputs/sshd",
            image["dev_access"]["sshd"]["sha256"].as_str().unwrap(),
        ),
        (
            "manifest (records all of the above)",
            "—",
            image["manifest_sha256"].as_str().unwrap(),
        ),
    ] {
        assert!(
            inputs.contains(&format!("| {what} | {source} | {sha256} |")),
            "no input row {what} {source} {sha256}:\n{inputs}"
        );
    }
    assert!(inputs.contains("| layer 2: app | inputs/app.bin |") && inputs.contains("| /app/app.bin | new |"));
    let operator = std::fs::read_to_string(example_dir().join("keys/operator.pub")).unwrap();
    let ssh = row(&md, "SSH access (development images)", "safebox_image.app");
    assert_eq!(
        ssh,
        format!(
            "| safebox_image.app | ssh-ed25519 | operator@example | {} | — |",
            ssh_fingerprint(&operator)
        )
    );
    assert!(
        !md.contains(operator.split_whitespace().nth(1).unwrap()),
        "the whole key is not shown"
    );

    // 2. The auditor counts the approvals collected so far, offline: none, then auditor-a's.
    let collected = ws.path().join("collected");
    std::fs::create_dir_all(&collected).unwrap();
    let md = report(&ws, &["plan.json", "--approvals", "collected"]);
    assert!(
        row(&md, "Governed changes", "safebox_image.app").contains(
            "| 0 of 1 for image.publish; counted: nobody; missing role auditor: 1 more (auditor-a, auditor-b) (counted offline from collected;"
        ),
        "{md}"
    );
    assert!(
        md.contains("`safebox_image.app`: approvals are missing for image.publish"),
        "{md}"
    );
    approve(&ws, "auditor-a", "image.publish", &digest, &collected.join("a.json"));
    let md = report(&ws, &["plan.json", "--approvals", "collected"]);
    assert!(
        row(&md, "Governed changes", "safebox_image.app")
            .contains("| 1 of 1 for image.publish; approved by auditor-a (counted offline from collected;"),
        "{md}"
    );
    assert!(!md.contains("approvals are missing"), "{md}");

    // 3. The signed approval goes to approvals_dir and the saved plan is applied as signed.
    std::fs::copy(collected.join("a.json"), approvals.join("a.json")).unwrap();
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "plan.out"]);
    let state = ws.state();
    let head = resource_values(&state, "safebox_image.app").unwrap()["audit_head"]
        .as_str()
        .unwrap()
        .to_owned();

    // 4. A policy update (a signer added, a threshold raised, a rename whose text would be
    //    markup) and a development box in the same plan: before → after, and the head to check.
    let signer_c = format!(
        "  signer {{\n    id             = \"auditor-c\"\n    role           = \"security\"\n    public_key_pem = file(\"{}/auditor-c.pub.pem\")\n  }}\n",
        keys_dir().display()
    );
    let dev_box = "resource \"safebox_enclave\" \"dev\" {\n  image_id   = safebox_image.app.id\n  variant    = \"dev\"\n  cpu_count  = 1\n  memory_mib = 256\n}\n";
    let name = "<script>alert(\"p\")</script>";
    ws.write_config(
        PROVIDER,
        &format!("{}{}{dev_box}", policy(name, &signer_c, 2), governed_image()),
    );
    let plan = save_plan(&mut ws);
    let update = &plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "safebox_policy.gov")
        .unwrap()["change"];
    let before_digest = update["before"]["digest"].as_str().unwrap();
    let after_digest = update["after"]["digest"].as_str().unwrap();
    let md = report(&ws, &["plan.json", "--plan-file", "plan.out"]);
    let changes = rows(&md, "Policy changes (before → after)", "safebox_policy.gov");
    for expected in [
        "| safebox_policy.gov | name | p | &lt;script&gt;alert(\"p\")&lt;/script&gt; |".to_owned(),
        "| safebox_policy.gov | version | 1 | 2 |".to_owned(),
        // The first digits of `openssl pkey -pubin -in auditor-c.pub.pem -outform DER | sha256sum`.
        "| safebox_policy.gov | signer auditor-c added | — | role security, ecdsa-p384 key 8f7a89c35d2c7d05 |"
            .to_owned(),
        "| safebox_policy.gov | rule image.publish changed | 1 of role auditor | 2 of role auditor |".to_owned(),
        format!("| safebox_policy.gov | digest | {before_digest} | {after_digest} |"),
    ] {
        assert!(
            changes.contains(&expected.as_str()),
            "no {expected:?} in:\n{}",
            changes.join("\n")
        );
    }
    assert_eq!(changes.len(), 5, "nothing else changed:\n{}", changes.join("\n"));
    let governed = row(&md, "Governed changes", "safebox_policy.gov");
    assert!(
        governed.contains("| update in place | policy.update |")
            && governed.contains(&format!("version 1 in force, {before_digest}"))
            && governed.contains(&format!("the new version 2, {after_digest}"))
            && governed.contains("| not known until apply: approvals may still arrive"),
        "{governed}"
    );
    // The box is flagged, and its approvals cannot be counted against a policy that changes first.
    assert!(
        md.contains("`safebox_enclave.dev` boots the **development** image"),
        "{md}"
    );
    assert!(
        row(&md, "Boxes", "safebox_enclave.dev").contains("| dev (SSH access) |"),
        "{md}"
    );
    let md_counted = report(&ws, &["plan.json", "--approvals", "collected"]);
    assert!(
        row(&md_counted, "Governed changes", "safebox_enclave.dev")
            .contains("| not known until apply: its policy safebox_policy.gov changes in this same plan"),
        "{md_counted}"
    );
    // The audit head recorded in state, and a command line that checks it.
    let command = md
        .lines()
        .find(|l| l.starts_with("safebox audit verify "))
        .unwrap_or_else(|| panic!("no audit verify command:\n{md}"));
    assert!(command.ends_with(&format!(" --expect-head {head}")), "{command}");
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let verified = Command::new(built_binary("safebox"))
        .args(&args)
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(
        verified.status.success() && text(&verified).contains("the expected heads are held"),
        "{command}: {}",
        text(&verified)
    );

    // HTML: every value escaped, nothing active.
    let html = report(&ws, &["plan.json", "--plan-file", "plan.out", "--format", "html"]);
    assert!(
        html.contains("&lt;script&gt;alert(&quot;p&quot;)&lt;/script&gt;"),
        "the name is escaped:\n{html}"
    );
    assert!(!html.contains("<script"), "no script element:\n{html}");
    assert!(html.contains(&sha256_of(&ws.path().join("plan.out"))));
    assert!(html.contains("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"));
}
