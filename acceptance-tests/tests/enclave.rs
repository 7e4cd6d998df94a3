//! `safebox_enclave` on the local backend against the real Terraform: the plan shows the
//! expected PCRs, apply attests, refresh re-attests (a killed box is drift and is replaced),
//! tampered images and wrong PCRs fail closed with no box left running, destroy leaves no
//! process and no file.

use std::fs;
use std::path::Path;

use safebox_acceptance_tests::{
    assert_refused, attr_equals, attr_matches, mentions, resource_values, run, text, Action, Check, Step, Workspace,
};
use serde_json::Value;

const IMAGE: &str = "safebox_image.app";
const BOX: &str = "safebox_enclave.box";

fn example() -> (Vec<(String, Vec<u8>)>, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/resources/safebox_enclave");
    let files = [
        "inputs/bzImage",
        "inputs/init.tar",
        "inputs/app.bin",
        "inputs/sshd",
        "keys/operator.pub",
    ]
    .iter()
    .map(|name| ((*name).to_owned(), fs::read(dir.join(name)).expect("example input")))
    .collect();
    let main = fs::read_to_string(dir.join("main.tf")).expect("example");
    // The harness writes its own terraform and provider blocks.
    let start = main.find("resource \"safebox_image\"").expect("image resource");
    let end = main.find("resource \"safebox_enclave\"").expect("enclave resource");
    (files, main[start..end].to_owned())
}

const SIMULATED: &str = "  attestation {\n    allow_simulated = true\n  }";

fn enclave(extra: &str) -> String {
    format!("resource \"safebox_enclave\" \"box\" {{\n  image_id = safebox_image.app.id\n  {extra}\n}}\n")
}

fn attested_like_the_image() -> Check {
    Box::new(|doc: &Value| {
        let image = resource_values(doc, IMAGE).ok_or("no image")?;
        let enclave = resource_values(doc, BOX).ok_or("no enclave")?;
        let attestation = &enclave["attestation"];
        for i in 0..3 {
            if attestation["pcrs"][i.to_string()] != image["prod_measurements"][format!("pcr{i}")] {
                return Err(format!("attested PCR{i} differs from the image's"));
            }
        }
        if attestation["simulated"] != true {
            return Err("the local backend's attestation must say simulated = true".into());
        }
        if attestation["public_key"].as_str().is_none_or(|k| k.len() != 194) {
            return Err(format!(
                "expected the agent's P-384 public key, got {}",
                attestation["public_key"]
            ));
        }
        Ok(())
    })
}

#[test]
fn apply_attests_refresh_is_quiet_import_works_and_destroy_leaves_nothing() {
    let (files, image) = example();
    let ws = run(vec![Step {
        files,
        provider: SIMULATED.into(),
        config: format!("{image}\n{}", enclave("")),
        plan: vec![(IMAGE, Action::Create), (BOX, Action::Create)],
        checks: vec![
            attr_equals(BOX, "/status", "attested".into()),
            attr_matches(BOX, "/endpoint", "a local endpoint", |e| {
                e.starts_with("http://127.0.0.1:")
            }),
            attr_matches(BOX, "/attestation/document_sha256", "a SHA-256", |d| d.len() == 64),
            attested_like_the_image(),
            Box::new(|doc: &Value| {
                let enclave = resource_values(doc, BOX).ok_or("no enclave")?;
                let image = resource_values(doc, IMAGE).ok_or("no image")?;
                // Without expected_pcrs in configuration, the image's PCRs are expected.
                if enclave["expected_pcrs"]["0"] == image["prod_measurements"]["pcr0"] {
                    Ok(())
                } else {
                    Err("expected_pcrs defaults to the image's PCRs".into())
                }
            }),
        ],
        import: Some(BOX),
        ..Step::default()
    }]);
    assert!(
        safebox_acceptance_tests::processes::mentioning(ws.path()).is_empty(),
        "destroy left agents running"
    );
}

#[test]
fn the_plan_shows_the_expected_pcrs_and_warns_that_attestation_is_simulated() {
    let (files, image) = example();
    let mut ws = Workspace::new();
    for (name, content) in &files {
        ws.write_file(name, content);
    }
    ws.write_config(
        SIMULATED,
        &format!(
            "{image}\n{}",
            enclave("expected_pcrs = { \"0\" = safebox_image.app.prod_measurements.pcr0 }")
        ),
    );
    let out = ws.terraform(&["plan", "-out=plan.tfplan", "-input=false", "-no-color"]);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    assert!(mentions(&output, "Simulated attestation"), "{output}");
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "plan.tfplan"])).unwrap();
    let planned = resource_values(&plan, BOX).expect("planned enclave");
    let image_planned = resource_values(&plan, IMAGE).expect("planned image");
    assert_eq!(
        planned["expected_pcrs"]["0"], image_planned["prod_measurements"]["pcr0"],
        "known at plan time"
    );
    assert!(planned["expected_pcrs"]["0"].as_str().is_some_and(|p| p.len() == 96));
    // A prod box never serves SSH: its plan says so even before its image exists.
    let change = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == BOX)
        .unwrap();
    assert!(planned["ssh_endpoint"].is_null(), "{planned}");
    assert!(
        change["change"]["after_unknown"]["ssh_endpoint"].is_null(),
        "ssh_endpoint is not 'known after apply' for a prod box"
    );
}

#[test]
fn a_killed_box_is_drift_and_is_replaced() {
    let (files, image) = example();
    let mut ws = Workspace::new();
    for (name, content) in &files {
        ws.write_file(name, content);
    }
    ws.write_config(SIMULATED, &format!("{image}\n{}", enclave("")));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let first = resource_values(&ws.state(), BOX).unwrap().clone();
    let agents = safebox_acceptance_tests::processes::mentioning(ws.path());
    assert_eq!(agents.len(), 1, "one agent per box: {agents:?}");
    std::process::Command::new("kill")
        .arg("-9")
        .arg(agents[0].to_string())
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    let out = ws.terraform(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(mentions(&output, "stopped: the box is not running"), "{output}");
    assert!(mentions(&output, "must be replaced"), "{output}");
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let second = resource_values(&ws.state(), BOX).unwrap().clone();
    assert_ne!(first["id"], second["id"]);
    assert_eq!(second["status"], "attested");
    ws.plan_is_empty().unwrap();
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert!(safebox_acceptance_tests::processes::mentioning(ws.path()).is_empty());
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}

#[test]
fn tampered_images_and_wrong_pcrs_fail_closed_with_no_box_left() {
    let (files, image) = example();
    let mut ws = Workspace::new();
    for (name, content) in &files {
        ws.write_file(name, content);
    }
    ws.write_config(SIMULATED, &image);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let state = ws.state();
    let prod = resource_values(&state, IMAGE).unwrap()["prod_artifact"]
        .as_str()
        .unwrap()
        .to_owned();
    let original = fs::read(&prod).unwrap();

    // A PCR the image cannot have: the box boots, its document does not match, it is stopped.
    ws.write_config(
        SIMULATED,
        &format!(
            "{image}\n{}",
            enclave(&format!("expected_pcrs = {{ \"3\" = \"{}\" }}", "ab".repeat(48)))
        ),
    );
    let out = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(&out, &["Attestation failed: the box was stopped", "PCR3"]);
    assert!(
        safebox_acceptance_tests::processes::mentioning(ws.path()).is_empty(),
        "the failed box was stopped"
    );

    // A PCR0 the image does not measure: refused before anything starts.
    ws.write_config(
        SIMULATED,
        &format!(
            "{image}\n{}",
            enclave(&format!("expected_pcrs = {{ \"0\" = \"{}\" }}", "cd".repeat(48)))
        ),
    );
    let out = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert!(
        mentions(&text(&out), "Expected PCR differs from the image"),
        "{}",
        text(&out)
    );

    // The published image changed on disk: no box is started from it.
    let mut tampered = original.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    fs::write(&prod, &tampered).unwrap();
    ws.write_config(SIMULATED, &format!("{image}\n{}", enclave("")));
    let out = ws.terraform(&["apply", "-auto-approve", "-refresh=false", "-input=false", "-no-color"]);
    assert_refused(&out, &["Image artifact tampered with", "No box was started"]);
    assert!(safebox_acceptance_tests::processes::mentioning(ws.path()).is_empty());

    fs::write(&prod, &original).unwrap();
    ws.write_config(SIMULATED, &image);
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}

#[test]
fn simulated_attestation_must_be_allowed_explicitly() {
    let (files, image) = example();
    let mut ws = Workspace::new();
    for (name, content) in &files {
        ws.write_file(name, content);
    }
    ws.write_config("", &format!("{image}\n{}", enclave("")));
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["allow_simulated = true", "proves nothing about hardware"]);
}
