//! `safebox_image` with `format = "uki"` through the real Terraform on the local backend: the
//! plan shows NitroTPM PCR4, PCR7 and PCR12 and each disk's digest before anything is built
//! for good, apply publishes the bootable disks with exactly those digests, the published
//! manifest rebuilds both disks bit for bit with the `safebox` CLI, and import finds them.
//! (That the guest's TPM holds the planned PCRs after OVMF boots these disks is shown by
//! `safebox/tests/uki_boot.rs`, on the same builder.)
//!
//! Needs `scripts/uki-inputs` (scripts/test runs it): under `CI=true` missing inputs fail
//! the test; elsewhere it is skipped with one line saying what to run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use safebox_acceptance_tests::{built_binary, inputs, resource_values, run, text, Action, Check, Step};
use serde_json::Value;
use sha2::{Digest, Sha256};

const IMAGE: &str = "safebox_image.box";

/// Files to write into the workspace, by name.
type Files = Vec<(String, Vec<u8>)>;

/// The inputs and their pinned digests, or `None` (skipped, or failed under CI).
fn load_inputs() -> Option<(Files, BTreeMap<String, String>)> {
    let dir = inputs::uki_inputs();
    let mut pinned = inputs::pinned(&dir);
    if pinned.is_empty() {
        inputs::missing(&format!(
            "the UKI inputs are missing in {}: run scripts/uki-inputs",
            dir.display()
        ));
        return None;
    }
    let mut files: Vec<(String, Vec<u8>)> = ["linuxx64.efi.stub", "vmlinuz", "init.tar"]
        .iter()
        .map(|n| ((*n).to_owned(), fs::read(dir.join(n)).expect("UKI input")))
        .collect();
    // A stand-in sshd: the SSH layer is what the seal removes, whatever it holds.
    let sshd = b"#!/bin/sh\nexec /bin/sh\n".to_vec();
    pinned.insert("sshd".into(), hex::encode(Sha256::digest(&sshd)));
    files.push(("sshd".into(), sshd));
    files.push((
        "operator.pub".into(),
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEWTXtuXXgEGNqQ3UMa2SxL0pHpPC7qLFHm7cOgx9lHo operator\n".to_vec(),
    ));
    Some((files, pinned))
}

fn config(pinned: &BTreeMap<String, String>) -> String {
    let pin = |name: &str| pinned.get(name).cloned().unwrap_or_default();
    format!(
        r#"
resource "safebox_image" "box" {{
  name              = "attestable"
  format            = "uki"
  source_date_epoch = 1700000000
  boot_stub {{
    source = "linuxx64.efi.stub"
    sha256 = "{stub}"
  }}
  kernel {{
    source = "vmlinuz"
    sha256 = "{kernel}"
  }}
  cmdline = "console=ttyS0"
  layer {{
    name   = "init"
    source = "init.tar"
    sha256 = "{init}"
  }}
  dev_access {{
    ssh_authorized_keys = [file("operator.pub")]
    sshd {{
      source = "sshd"
      sha256 = "{sshd}"
    }}
  }}
}}
"#,
        stub = pin("linuxx64.efi.stub"),
        kernel = pin("vmlinuz"),
        init = pin("init.tar"),
        sshd = pin("sshd"),
    )
}

fn is_sha384(s: &str) -> bool {
    s.len() == 96 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Both variants carry the NitroTPM PCRs and a disk digest, and no EIF PCR.
fn measured_as_uki() -> Check {
    Box::new(|doc: &Value| {
        let image = resource_values(doc, IMAGE).ok_or("the image is not there")?;
        for variant in ["dev", "prod"] {
            let m = &image[format!("{variant}_measurements")];
            let text = |name: &str| m[name].as_str().unwrap_or_default();
            for pcr in ["pcr4", "pcr7", "pcr12"] {
                if !is_sha384(text(pcr)) {
                    return Err(format!("{variant} {pcr} is {}, not SHA-384 hex", m[pcr]));
                }
            }
            for digest in ["disk_sha256", "image_sha256"] {
                if !is_sha256(text(digest)) {
                    return Err(format!("{variant} {digest} is {}, not SHA-256 hex", m[digest]));
                }
            }
            for pcr in ["pcr0", "pcr1", "pcr2"] {
                if !m[pcr].is_null() {
                    return Err(format!("{variant} {pcr} is {}, but a UKI has no EIF PCRs", m[pcr]));
                }
            }
        }
        Ok(())
    })
}

/// The published disks hash to the planned digests; the production and development images
/// differ only where the SSH layer was.
fn published_as_planned() -> Check {
    Box::new(|state: &Value| {
        let image = resource_values(state, IMAGE).ok_or("no image")?;
        for variant in ["dev", "prod"] {
            let path = image[format!("{variant}_artifact")].as_str().ok_or("no artifact")?;
            if !path.ends_with(&format!("{variant}.img")) {
                return Err(format!("{variant}_artifact is {path}, not a disk image"));
            }
            let actual = hex::encode(Sha256::digest(fs::read(path).map_err(|e| e.to_string())?));
            let planned = image[format!("{variant}_measurements")]["disk_sha256"]
                .as_str()
                .unwrap_or_default();
            if actual != planned {
                return Err(format!("{path} hashes to {actual}, the plan said {planned}"));
            }
        }
        if image["dev_measurements"]["pcr4"] == image["prod_measurements"]["pcr4"] {
            return Err("dev and prod boot the same PCR4: the seal removed nothing".into());
        }
        if image["dev_measurements"]["pcr7"] != image["prod_measurements"]["pcr7"] {
            return Err("PCR7 (Secure Boot policy) differs between the variants".into());
        }
        Ok(())
    })
}

/// `safebox image rebuild` of the published manifest, in another folder, gives the same disks.
fn rebuilds_bit_for_bit(inputs: &Path) -> Check {
    let inputs = inputs.to_path_buf();
    Box::new(move |state: &Value| {
        let image = resource_values(state, IMAGE).ok_or("no image")?;
        let artifact = PathBuf::from(image["prod_artifact"].as_str().unwrap_or_default());
        let manifest = artifact.with_file_name("manifest.json");
        let out = tempfile::tempdir().map_err(|e| e.to_string())?;
        let rebuilt = Command::new(built_binary("safebox"))
            .args(["image", "rebuild"])
            .arg(&manifest)
            .arg("--inputs")
            .arg(&inputs)
            .arg("--out")
            .arg(out.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !rebuilt.status.success() {
            return Err(format!("safebox image rebuild failed: {}", text(&rebuilt)));
        }
        for variant in ["dev", "prod"] {
            let published = fs::read(image[format!("{variant}_artifact")].as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?;
            let again = fs::read(out.path().join(format!("{variant}.img"))).map_err(|e| e.to_string())?;
            if published != again {
                return Err(format!("the rebuilt {variant} disk differs from the published one"));
            }
        }
        Ok(())
    })
}

/// `safebox image inspect` of the published disks recomputes what the state says (the disks'
/// SHA-256, the UKIs' PCR4, PCR7 and PCR12) and verifies the seal proof they carry; given in
/// the wrong order, the proof does not hold and it fails saying so.
fn inspection_verifies_the_seal() -> Check {
    Box::new(move |state: &Value| {
        let image = resource_values(state, IMAGE).ok_or("no image")?;
        let disk = |variant: &str| {
            image[format!("{variant}_artifact")]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let inspect = |first: &str, second: &str| {
            Command::new(built_binary("safebox"))
                .args(["image", "inspect", first, second])
                .output()
                .map_err(|e| e.to_string())
        };
        let out = inspect(&disk("dev"), &disk("prod"))?;
        if !out.status.success() {
            return Err(format!("safebox image inspect failed: {}", text(&out)));
        }
        let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        if report["seal_proof"] != "verified" {
            return Err(format!("the seal proof was not verified: {report}"));
        }
        for variant in ["dev", "prod"] {
            let measured = &image[format!("{variant}_measurements")];
            let read = &report[variant];
            if read["disk_sha256"] != measured["disk_sha256"] {
                return Err(format!(
                    "{variant}: inspect reads disk {} where the state has {}",
                    read["disk_sha256"], measured["disk_sha256"]
                ));
            }
            for field in ["image_sha256", "pcr4", "pcr7", "pcr12"] {
                if read["uki"][field] != measured[field] {
                    return Err(format!(
                        "{variant} {field}: inspect recomputes {}, the state has {}",
                        read["uki"][field], measured[field]
                    ));
                }
            }
        }
        let swapped = inspect(&disk("prod"), &disk("dev"))?;
        let said = text(&swapped);
        if swapped.status.code() != Some(1) || !said.contains("the seal proof does not hold") {
            return Err(format!(
                "inspect of the disks in the wrong order did not refuse: {said}"
            ));
        }
        Ok(())
    })
}

#[test]
fn an_attestable_image_plans_its_nitrotpm_pcrs_and_publishes_the_disks_it_measured() {
    let Some((files, pinned)) = load_inputs() else { return };
    // The rebuild reads the inputs by their manifest names, from a folder holding them all.
    let copy = tempfile::tempdir().unwrap();
    for (name, bytes) in &files {
        fs::write(copy.path().join(name), bytes).unwrap();
    }
    run(vec![Step {
        files: files.clone(),
        config: config(&pinned),
        plan: vec![(IMAGE, Action::Create)],
        plan_checks: vec![measured_as_uki()],
        checks: vec![
            measured_as_uki(),
            published_as_planned(),
            rebuilds_bit_for_bit(copy.path()),
            inspection_verifies_the_seal(),
        ],
        import: Some(IMAGE),
        ..Step::default()
    }]);
}

#[test]
fn a_uki_image_needs_its_boot_stub_and_an_eif_has_none() {
    let Some((files, pinned)) = load_inputs() else { return };
    let without = config(&pinned).replacen("  boot_stub {", "  dummy_stub {", 1);
    let without =
        without[..without.find("  dummy_stub {").unwrap()].to_owned() + &without[without.find("  kernel {").unwrap()..];
    let with_eif = config(&pinned).replacen("format            = \"uki\"", "format            = \"eif\"", 1);
    let mut ws = safebox_acceptance_tests::Workspace::new();
    for (name, bytes) in &files {
        ws.write_file(name, bytes);
    }
    for (hcl, needle) in [(without, "boot_stub"), (with_eif, "boot_stub")] {
        ws.write_config("", &hcl);
        let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            safebox_acceptance_tests::mentions(&text(&out), needle),
            "{}",
            text(&out)
        );
    }
}
