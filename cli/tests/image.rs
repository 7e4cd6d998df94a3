//! `safebox image rebuild` and `inspect` as an auditor runs them, on another machine state:
//! another folder, time zone, locale and umask must not change a single byte.

use std::fs;
use std::path::Path;
use std::process::Command;

use safebox::image::build::{BuildOptions, ImageBuild};
use safebox::image::Variant;

#[path = "../../safebox/tests/common/mod.rs"]
mod common;
use common::{inputs, sha256_hex};

fn safebox() -> &'static str {
    env!("CARGO_BIN_EXE_safebox")
}

/// Builds with the library and writes the manifest as the provider publishes it.
fn published(dir: &Path) -> ImageBuild {
    let spec = inputs(dir, false);
    let build = ImageBuild::load_or_build(
        &spec,
        &BuildOptions {
            base_dir: dir,
            cache_dir: &dir.join(".cache"),
            progress: None,
        },
    )
    .unwrap();
    fs::write(dir.join("manifest.json"), build.manifest()).unwrap();
    build
}

/// Runs `safebox args` in `dir` under a shell with `umask`, `TZ` and `LC_ALL` set.
fn run_in(dir: &Path, umask: &str, tz: &str, locale: &str, args: &[&str]) -> std::process::Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec '{}' {}", safebox(), quoted.join(" ")))
        .current_dir(dir)
        .env("TZ", tz)
        .env("LC_ALL", locale)
        .output()
        .unwrap()
}

#[test]
fn rebuilds_bit_for_bit_elsewhere_and_says_so() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let build = published(a.path());
    // The auditor's copy: same inputs written in another order in another folder.
    inputs(b.path(), true);
    fs::copy(a.path().join("manifest.json"), b.path().join("manifest.json")).unwrap();

    let first = run_in(
        a.path(),
        "022",
        "UTC",
        "C",
        &["image", "rebuild", "manifest.json", "--out", "out"],
    );
    let second = run_in(
        b.path(),
        "077",
        "Asia/Kolkata",
        "de_DE.UTF-8",
        &["image", "rebuild", "manifest.json", "--out", "out"],
    );
    for out in [&first, &second] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(first.stdout, second.stdout);
    let printed: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(
        printed["prod"]["pcr0"].as_str(),
        build.measurements(Variant::Prod).pcr0.as_deref()
    );
    for name in ["dev.eif", "prod.eif", "manifest.json", "seal-proof.json"] {
        let (x, y) = (
            fs::read(a.path().join("out").join(name)).unwrap(),
            fs::read(b.path().join("out").join(name)).unwrap(),
        );
        assert!(x == y, "{name} differs between the two rebuilds");
    }
    assert_eq!(
        sha256_hex(&fs::read(a.path().join("out/dev.eif")).unwrap()),
        build.measurements(Variant::Dev).image_sha256
    );
}

#[test]
fn a_rebuild_that_does_not_match_the_manifest_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let build = published(dir.path());
    let recorded = build.measurements(Variant::Prod).pcr2.clone().unwrap();
    let forged = build.manifest().replace(recorded.as_str(), &"ab".repeat(48));
    fs::write(dir.path().join("forged.json"), forged).unwrap();
    let out = run_in(dir.path(), "022", "UTC", "C", &["image", "rebuild", "forged.json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("prod pcr2: the manifest records abab") && stderr.contains(recorded.as_str()),
        "{stderr}"
    );

    // A changed input is caught by its pinned digest before anything is compared.
    fs::write(dir.path().join("server"), b"tampered").unwrap();
    let out = run_in(dir.path(), "022", "UTC", "C", &["image", "rebuild", "manifest.json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("layer[2].sha256") && stderr.contains("server"),
        "{stderr}"
    );
}

#[test]
fn inspect_prints_sections_and_pcrs() {
    let dir = tempfile::tempdir().unwrap();
    let build = published(dir.path());
    let mut file = fs::File::create(dir.path().join("prod.eif")).unwrap();
    build.write_eif(Variant::Prod, &mut file).unwrap();
    let out = run_in(dir.path(), "022", "UTC", "C", &["image", "inspect", "prod.eif"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = build.measurements(Variant::Prod);
    assert_eq!(value["pcrs"]["pcr0"].as_str(), m.pcr0.as_deref());
    assert_eq!(value["image_sha256"], m.image_sha256);
    let kinds: Vec<&str> = value["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["kernel", "cmdline", "metadata", "ramdisk", "ramdisk", "ramdisk"]
    );
    assert_eq!(value["crc_ok"], true);

    // One byte of the last section changed: the report is printed, then the refusal.
    let mut damaged = fs::read(dir.path().join("prod.eif")).unwrap();
    *damaged.last_mut().unwrap() ^= 1;
    fs::write(dir.path().join("damaged.eif"), &damaged).unwrap();
    let out = run_in(dir.path(), "022", "UTC", "C", &["image", "inspect", "damaged.eif"]);
    assert_eq!(out.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["crc_ok"], false);
    assert_eq!(value["sections"].as_array().map(Vec::len), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CRC-32 does not match"));

    fs::write(dir.path().join("junk.eif"), b"not an eif").unwrap();
    let out = run_in(dir.path(), "022", "UTC", "C", &["image", "inspect", "junk.eif"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an EIF"));
}
