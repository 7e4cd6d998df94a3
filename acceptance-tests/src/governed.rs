//! What governed tests share: the example image and its inputs, a policy of the fixture
//! auditors, signing approvals as an auditor would (the `safebox` CLI or plain openssl), and
//! reading what a plan says about them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::Value;

use crate::{built_binary, resource_values, text, Workspace};

/// The fixture auditors' keys (ed25519 `auditor-a`, P-256 `auditor-b`, P-384 `auditor-c`).
#[must_use]
pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/keys")
}

/// The inputs of `examples/resources/safebox_image`, as (relative path, bytes).
#[must_use]
pub fn image_inputs() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/resources/safebox_image");
    [
        "inputs/bzImage",
        "inputs/init.tar",
        "inputs/app.bin",
        "inputs/sshd",
        "keys/operator.pub",
    ]
    .iter()
    .map(|n| ((*n).to_owned(), std::fs::read(dir.join(n)).expect("example input")))
    .collect()
}

/// The example `safebox_image.app` named `name`, with `extra` lines (e.g. its `policy_id`).
#[must_use]
pub fn image(name: &str, extra: &str) -> String {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/resources/safebox_image/main.tf"),
    )
    .expect("example");
    let start = src.find("resource \"safebox_image\"").expect("image");
    let end = src.find("output \"prod_pcr0\"").expect("output");
    src[start..end].replace(
        "name              = \"data-box\"",
        &format!("name              = \"{name}\"\n  {extra}"),
    )
}

/// `safebox_policy.gov` named `customer-data`: auditor-a and auditor-b (role auditor),
/// auditor-c (role security), the given `rules` and `extra` lines.
#[must_use]
pub fn policy(rules: &str, extra: &str) -> String {
    format!(
        r#"
resource "safebox_policy" "gov" {{
  name = "customer-data"
  {extra}
  signer {{
    id             = "auditor-a"
    role           = "auditor"
    public_key_pem = file("{keys}/auditor-a.pub.pem")
  }}
  signer {{
    id             = "auditor-b"
    role           = "auditor"
    public_key_pem = file("{keys}/auditor-b.pub.pem")
  }}
  signer {{
    id             = "auditor-c"
    role           = "security"
    public_key_pem = file("{keys}/auditor-c.pub.pem")
  }}
  {rules}
}}
"#,
        keys = keys_dir().display()
    )
}

/// A `rule` block.
#[must_use]
pub fn rule(action: &str, threshold: u32, roles: &str) -> String {
    format!("rule {{\n    action    = \"{action}\"\n    threshold = {threshold}\n    roles     = {roles}\n  }}\n  ")
}

/// The provider lines of a governed workspace: approvals in `approvals/`, simulated attestation.
pub const PROVIDER: &str = "  approvals_dir = \"approvals\"\n  attestation {\n    allow_simulated = true\n  }";

/// A workspace with the example image's inputs and an empty `approvals/`.
#[must_use]
pub fn workspace() -> Workspace {
    let mut ws = Workspace::new();
    for (name, content) in image_inputs() {
        ws.write_file(&name, content);
    }
    std::fs::create_dir_all(ws.path().join("approvals")).expect("approvals dir");
    ws
}

/// Signs `digest` for `action` as `signer` with `safebox approve`, into `approvals/<file>`.
pub fn approve(ws: &Workspace, signer: &str, action: &str, digest: &str, file: &str) {
    let out = Command::new(built_binary("safebox"))
        .args([
            "approve",
            "--key",
            keys_dir().join(format!("{signer}.key.pem")).to_str().expect("path"),
            "--signer",
            signer,
            "--action",
            action,
            "--digest",
            digest,
            "--out",
        ])
        .arg(ws.path().join("approvals").join(file))
        .output()
        .expect("safebox approve");
    assert!(out.status.success(), "{}", text(&out));
}

/// Signs with plain openssl, as an auditor without Safebox tooling would: Ed25519 over the
/// message (auditor-a), ECDSA over its SHA-256 (P-256, auditor-b) or SHA-384 (P-384,
/// auditor-c).
pub fn openssl_approve(ws: &Workspace, signer: &str, action: &str, digest: &str, file: &str) {
    let message = ws.path().join(format!("{file}.msg"));
    std::fs::write(&message, format!("safebox-approval:v1:{action}:{digest}")).expect("message");
    let signature = ws.path().join(format!("{file}.sig"));
    let key = keys_dir().join(format!("{signer}.key.pem"));
    let mut command = Command::new("openssl");
    match signer {
        "auditor-a" => command
            .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
            .arg(&key)
            .arg("-in")
            .arg(&message)
            .arg("-out")
            .arg(&signature),
        other => command
            .args([
                "dgst",
                if other == "auditor-c" { "-sha384" } else { "-sha256" },
                "-sign",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&signature)
            .arg(&message),
    };
    let status = command.status().expect("openssl");
    assert!(status.success(), "openssl signing failed");
    let approval = serde_json::json!({
        "signer": signer,
        "action": action,
        "digest": digest,
        "signature": base64::engine::general_purpose::STANDARD.encode(std::fs::read(&signature).expect("signature")),
    });
    std::fs::write(ws.path().join("approvals").join(file), approval.to_string()).expect("approval");
}

/// Plans into `p.tfplan`; returns the change digest `address` shows, how its approvals stand
/// (from the plan's warning: the status is no planned value, since approvals may still come
/// before the saved plan is applied) and the plan output.
pub fn planned_change(ws: &mut Workspace, address: &str) -> (String, String, String) {
    let out = ws.terraform(&["plan", "-out=p.tfplan", "-input=false", "-no-color"]);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "p.tfplan"])).expect("plan JSON");
    let values = resource_values(&plan, address).unwrap_or_else(|| panic!("{address} is not planned"));
    let digest = values["change_digest"].as_str().unwrap_or_default().to_owned();
    assert!(
        values["approval_status"].is_null(),
        "approval_status is known after apply, not planned: {values}"
    );
    let status = status_in(&output, &digest);
    (digest, status, output)
}

/// The approval status a plan's warning gives for `digest` (empty when it gives none).
#[must_use]
pub fn status_in(output: &str, digest: &str) -> String {
    let folded = output.split_whitespace().collect::<Vec<_>>().join(" ");
    let marker = format!("Change digest {digest}: ");
    let Some(at) = folded.find(&marker) else {
        return String::new();
    };
    let rest = &folded[at + marker.len()..];
    let end = rest
        .find(" (rule:")
        .or_else(|| rest.find(". Apply checks"))
        .unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// `safebox audit verify` of the workspace's audit log with `extra` arguments.
#[must_use]
pub fn audit_verify(ws: &Workspace, extra: &[&str]) -> Output {
    Command::new(built_binary("safebox"))
        .args(["audit", "verify"])
        .arg(ws.state_dir().join("audit.log"))
        .args(extra)
        .output()
        .expect("safebox audit verify")
}
