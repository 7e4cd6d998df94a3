//! `safebox plan-report` on plans the real Terraform produced: the quickstart (images, boxes,
//! link, policy, simulated attestation) and a governed change short of approvals.

use std::path::Path;
use std::process::Command;

use safebox_acceptance_tests::{built_binary, resource_values, text, Workspace};
use serde_json::Value;

fn report(ws: &Workspace, plan_json: &Path, format: &str) -> String {
    let out = Command::new(built_binary("safebox"))
        .args(["plan-report", plan_json.to_str().unwrap(), "--format", format])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
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
    ws.terraform_ok(&["plan", "-out=plan.out", "-input=false", "-no-color"]);
    let json = ws.terraform_ok(&["show", "-json", "plan.out"]);
    std::fs::write(ws.path().join("plan.json"), &json).unwrap();
    let plan: Value = serde_json::from_str(&json).unwrap();
    let data = resource_values(&plan, "safebox_image.data").unwrap();

    let md = report(&ws, &ws.path().join("plan.json"), "markdown");
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
    std::fs::write(ws.path().join("report.md"), &md).unwrap();

    let html = report(&ws, &ws.path().join("plan.json"), "html");
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("<table>") && html.contains("<strong>simulated</strong>"),
        "{html}"
    );
    assert!(!html.contains("<script"), "self-contained and inert");
    assert!(html.contains(data["prod_measurements"]["pcr0"].as_str().unwrap()));
}

#[test]
fn governed_changes_show_their_digest_and_what_is_missing() {
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/keys");
    let mut ws = Workspace::new();
    let policy = format!(
        "resource \"safebox_policy\" \"gov\" {{\n  name = \"p\"\n  signer {{\n    id             = \"auditor-a\"\n    role           = \"auditor\"\n    public_key_pem = file(\"{k}/auditor-a.pub.pem\")\n  }}\n  rule {{\n    action    = \"image.publish\"\n    threshold = 1\n    roles     = [\"auditor\"]\n  }}\n}}\n",
        k = keys.display()
    );
    ws.write_config("", &policy);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/resources/safebox_image");
    for name in [
        "inputs/bzImage",
        "inputs/init.tar",
        "inputs/app.bin",
        "inputs/sshd",
        "keys/operator.pub",
    ] {
        ws.write_file(name, std::fs::read(example.join(name)).unwrap());
    }
    let main = std::fs::read_to_string(example.join("main.tf")).unwrap();
    let image = &main[main.find("resource \"safebox_image\"").unwrap()..main.find("output \"prod_pcr0\"").unwrap()];
    ws.write_config(
        "",
        &format!(
            "{policy}{}",
            image.replacen(
                "source_date_epoch",
                "policy_id         = safebox_policy.gov.id\n  source_date_epoch",
                1
            )
        ),
    );
    ws.terraform_ok(&["plan", "-out=plan.out", "-input=false", "-no-color"]);
    std::fs::write(
        ws.path().join("plan.json"),
        ws.terraform_ok(&["show", "-json", "plan.out"]),
    )
    .unwrap();
    let md = report(&ws, &ws.path().join("plan.json"), "markdown");
    assert!(
        md.contains("## Governed changes") && md.contains("0 of 1 for image.publish"),
        "{md}"
    );
    assert!(md.contains("`safebox_image.app`: approvals are missing"), "{md}");
    assert!(md.contains("| safebox_image.app | create | sha256:"), "{md}");
    ws.write_config("", &policy);
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
}
