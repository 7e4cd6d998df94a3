//! `safebox_image` against the real Terraform: measurements in the plan, publish, empty plan,
//! import, replacement on an input change, drift when a published file is tampered with, the
//! auditor's rebuild, destroy, and every bad input.

use std::fs;
use std::path::Path;

use safebox_acceptance_tests::{
    assert_refused, attr_equals, attr_matches, built_binary, mentions, resource_values, run, text, Action, Check, Step,
    Workspace,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ADDRESS: &str = "safebox_image.app";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The example inputs, as files for a step.
fn inputs() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/resources/safebox_image");
    [
        "inputs/bzImage",
        "inputs/init.tar",
        "inputs/app.bin",
        "inputs/sshd",
        "keys/operator.pub",
    ]
    .iter()
    .map(|name| ((*name).to_owned(), fs::read(dir.join(name)).expect("example input")))
    .collect()
}

fn digest_of(files: &[(String, Vec<u8>)], name: &str) -> String {
    sha256_hex(&files.iter().find(|(n, _)| n == name).expect("input").1)
}

/// An image over `files`, with `app` as the source of the app layer.
fn image(files: &[(String, Vec<u8>)], app: &str) -> String {
    format!(
        r#"
resource "safebox_image" "app" {{
  name              = "data-box"
  source_date_epoch = 1700000000
  kernel {{
    source = "inputs/bzImage"
    sha256 = "{kernel}"
  }}
  cmdline = "console=ttyS0"
  layer {{
    name   = "init"
    source = "inputs/init.tar"
    sha256 = "{init}"
  }}
  layer {{
    name        = "app"
    source      = "{app}"
    sha256      = "{app_sha}"
    destination = "/app/app.bin"
  }}
  dev_access {{
    ssh_authorized_keys = [file("keys/operator.pub")]
    sshd {{
      source = "inputs/sshd"
      sha256 = "{sshd}"
    }}
  }}
}}
"#,
        kernel = digest_of(files, "inputs/bzImage"),
        init = digest_of(files, "inputs/init.tar"),
        app_sha = digest_of(files, app),
        sshd = digest_of(files, "inputs/sshd"),
    )
}

fn is_hex(len: usize) -> fn(&str) -> bool {
    match len {
        64 => |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => |s: &str| s.len() == 96 && s.bytes().all(|b| b.is_ascii_hexdigit()),
    }
}

fn measurement_checks() -> Vec<Check> {
    vec![
        attr_matches(ADDRESS, "/manifest_sha256", "a SHA-256", is_hex(64)),
        attr_matches(ADDRESS, "/seal_proof_sha256", "a SHA-256", is_hex(64)),
        attr_matches(ADDRESS, "/dev_measurements/image_sha256", "a SHA-256", is_hex(64)),
        attr_matches(ADDRESS, "/prod_measurements/pcr0", "a SHA-384", is_hex(96)),
        attr_matches(ADDRESS, "/prod_measurements/pcr2", "a SHA-384", is_hex(96)),
        Box::new(|doc: &Value| {
            let values = resource_values(doc, ADDRESS).ok_or("no image")?;
            if values["dev_measurements"]["pcr1"] == values["prod_measurements"]["pcr1"]
                && values["dev_measurements"]["pcr0"] != values["prod_measurements"]["pcr0"]
            {
                Ok(())
            } else {
                Err(format!(
                    "expected equal PCR1 and different PCR0 between dev and prod: {values}"
                ))
            }
        }),
    ]
}

#[test]
fn plan_shows_measurements_then_publish_import_replace_destroy() {
    let files = inputs();
    let mut changed = files.clone();
    changed.push(("inputs/app-v2.bin".into(), b"#!/bin/sh\necho 'version 2'\n".to_vec()));
    run(vec![
        Step {
            files: files.clone(),
            config: image(&files, "inputs/app.bin"),
            plan: vec![(ADDRESS, Action::Create)],
            // Auditors see every measurement before anything is built or published.
            plan_checks: measurement_checks(),
            checks: {
                let mut checks = measurement_checks();
                checks.push(attr_equals(ADDRESS, "/artifact_status", "intact".into()));
                checks.push(Box::new(|doc: &Value| {
                    let values = resource_values(doc, ADDRESS).ok_or("no image")?;
                    for (artifact, measured) in [
                        ("dev_artifact", "dev_measurements"),
                        ("prod_artifact", "prod_measurements"),
                    ] {
                        let path = values[artifact].as_str().ok_or("no artifact path")?;
                        let bytes = fs::read(path).map_err(|e| format!("{path}: {e}"))?;
                        if sha256_hex(&bytes) != values[measured]["image_sha256"] {
                            return Err(format!("{path} does not hash to {measured}.image_sha256"));
                        }
                    }
                    Ok(())
                }));
                checks
            },
            import: Some(ADDRESS),
            ..Step::default()
        },
        Step {
            files: changed.clone(),
            config: image(&changed, "inputs/app-v2.bin"),
            plan: vec![(ADDRESS, Action::Replace)],
            plan_checks: measurement_checks(),
            ..Step::default()
        },
    ]);
}

fn apply(ws: &mut Workspace, config: &str) -> Value {
    ws.write_config("", config);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.state()
}

#[test]
fn a_tampered_artifact_is_drift_that_names_the_file_and_replaces_the_image() {
    let files = inputs();
    let mut ws = Workspace::new();
    for (name, content) in &files {
        ws.write_file(name, content);
    }
    let state = apply(&mut ws, &image(&files, "inputs/app.bin"));
    let values = resource_values(&state, ADDRESS).expect("image").clone();
    let prod = values["prod_artifact"].as_str().expect("prod artifact").to_owned();
    let mut bytes = fs::read(&prod).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&prod, bytes).unwrap();

    let out = ws.terraform(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        mentions(&output, "prod.eif changed"),
        "the plan names the file: {output}"
    );
    assert!(mentions(&output, "must be replaced"), "{output}");

    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.plan_is_empty().unwrap();
    let after = ws.state();
    let again = resource_values(&after, ADDRESS).unwrap();
    assert_eq!(
        again["prod_measurements"], values["prod_measurements"],
        "same inputs, same image"
    );
    assert_ne!(again["id"], values["id"]);
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}

#[test]
fn an_auditor_rebuilds_the_published_images_from_the_manifest() {
    let files = inputs();
    let mut ws = Workspace::new();
    for (name, content) in &files {
        ws.write_file(name, content);
    }
    let state = apply(&mut ws, &image(&files, "inputs/app.bin"));
    let values = resource_values(&state, ADDRESS).expect("image").clone();
    let manifest = Path::new(values["prod_artifact"].as_str().unwrap()).with_file_name("manifest.json");
    assert_eq!(sha256_hex(&fs::read(&manifest).unwrap()), values["manifest_sha256"]);
    let out = std::process::Command::new(built_binary("safebox"))
        .args(["image", "rebuild", manifest.to_str().unwrap()])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rebuilt: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The CLI prints what the image's format has; Terraform shows the others as null.
    let measured = |v: &Value| -> Value {
        v.as_object()
            .unwrap()
            .iter()
            .filter(|(_, x)| !x.is_null())
            .map(|(k, x)| (k.clone(), x.clone()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    assert_eq!(rebuilt["prod"], measured(&values["prod_measurements"]));
    assert_eq!(rebuilt["dev"], measured(&values["dev_measurements"]));
    assert_eq!(rebuilt["manifest_sha256"], values["manifest_sha256"]);

    // The published EIFs against their seal proof: the production image is the development
    // image minus its SSH layer; in the wrong order the proof does not hold.
    let proof = manifest.with_file_name("seal-proof.json");
    assert_eq!(sha256_hex(&fs::read(&proof).unwrap()), values["seal_proof_sha256"]);
    let inspect = |first: &str, second: &str| {
        std::process::Command::new(built_binary("safebox"))
            .args([
                "image",
                "inspect",
                "--seal-proof",
                proof.to_str().unwrap(),
                first,
                second,
            ])
            .output()
            .unwrap()
    };
    let (dev, prod) = (
        values["dev_artifact"].as_str().unwrap(),
        values["prod_artifact"].as_str().unwrap(),
    );
    let out = inspect(dev, prod);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["seal_proof"], "verified");
    assert_eq!(
        report["prod"]["image_sha256"],
        values["prod_measurements"]["image_sha256"]
    );
    assert_refused(&inspect(prod, dev), &["the seal proof does not hold", "SHA-256"]);
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
}

#[test]
fn every_bad_input_gets_a_diagnostic_at_its_attribute() {
    let files = inputs();
    let good = image(&files, "inputs/app.bin");
    let app_sha = digest_of(&files, "inputs/app.bin");
    let mut ws = Workspace::new();
    for (name, content) in &files {
        ws.write_file(name, content);
    }
    let tar_with = |path: &str| {
        let mut header = [0u8; 512];
        header[..path.len()].copy_from_slice(path.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[124..136].copy_from_slice(b"00000000004\0");
        header[156] = b'0';
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut tar = header.to_vec();
        tar.extend_from_slice(b"pwn!");
        tar.resize(512 * 4, 0);
        tar
    };
    let evil = tar_with("../../etc/cron.d/pwn");
    ws.write_file("inputs/evil.tar", &evil);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            good.replace(&app_sha, &"0".repeat(64)),
            vec!["layer[1].sha256", &app_sha, "0000000000000000"],
        ),
        (
            good.replace("inputs/app.bin", "inputs/missing.bin"),
            vec!["layer[1].source", "inputs/missing.bin"],
        ),
        (
            good.replace(&app_sha, "abc123"),
            vec!["layer[1].sha256", "64 hex digits"],
        ),
        (
            good.replace("/app/app.bin", "app/app.bin"),
            vec!["layer[1].destination", "not absolute"],
        ),
        (
            good.replace("name        = \"app\"", "name        = \"init\""),
            vec!["layer[1].name", "already used by layer[0]"],
        ),
        (
            good.replace("inputs/init.tar", "inputs/evil.tar")
                .replace(&digest_of(&files, "inputs/init.tar"), &sha256_hex(&evil)),
            vec!["layer[0].source", "../../etc/cron.d/pwn", "\"..\""],
        ),
        (
            good.replace("file(\"keys/operator.pub\")", "\"not a key\""),
            vec!["dev_access.ssh_authorized_keys[0]", "OpenSSH public key"],
        ),
    ];
    for (index, (config, needles)) in cases.into_iter().enumerate() {
        ws.write_config("", &config);
        let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
        eprintln!("case {index}");
        assert_refused(&out, &needles);
    }
    assert!(
        ws.state_dir_leftovers().iter().all(|f| !f.contains("artifacts")),
        "nothing was published"
    );
}

#[test]
fn a_plan_that_is_never_applied_leaves_nothing_in_state_dir() {
    let files = inputs();
    let mut ws = Workspace::new();
    for (name, content) in &files {
        ws.write_file(name, content);
    }
    ws.write_config("", &image(&files, "inputs/app.bin"));
    ws.terraform_ok(&["plan", "-input=false", "-no-color"]);
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}
