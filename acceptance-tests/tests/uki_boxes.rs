//! `safebox_enclave` of a `"uki"` image on the local backend, through the real Terraform: each
//! box boots its variant's published disk under QEMU, OVMF and swtpm, and is trusted only once
//! the agent inside answers with a NitroTPM document whose PCRs are the plan's.
//!
//! One apply boots a production and a development box (in parallel, as Terraform creates them):
//! - the prod box's verified PCR4, PCR7 and PCR12 equal the image's planned ones, QEMU forwards
//!   its agent port and nothing else, and its `ssh_endpoint` is null;
//! - the dev box attests to the dev image's PCRs and its `ssh_endpoint` answers an `SSH-2.0-`
//!   banner;
//! - refresh re-attests both: the plan after apply is empty;
//! - `expected_pcrs` naming an enclave's PCR0 is refused at plan;
//! - a third box, of a disk with one byte of its UKI changed after publishing (and the digest the
//!   backend checks before launch rewritten to match, as an attacker holding the artifact store
//!   would), boots and fails closed naming PCR4, leaving no process or folder;
//! - destroy leaves no QEMU or swtpm process and no file in `state_dir`.
//!
//! Needs `scripts/guest-layer`'s inputs (`.box-inputs`, or `SAFEBOX_BOX_INPUTS`) and QEMU, OVMF
//! and swtpm (`scripts/setup`); scripts/test makes both. Under `CI=true` anything missing fails
//! the test; elsewhere it is skipped with one line saying what to run. Boot and step times are
//! printed (`--nocapture`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safebox_acceptance_tests::{inputs, mentions, processes, resource_values, text, Workspace};
use serde_json::Value;
use sha2::{Digest, Sha256};

const IMAGE: &str = "safebox_image.box";
const PROD: &str = "safebox_enclave.prod";
const DEV: &str = "safebox_enclave.dev";
const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4";
const SIMULATED: &str = "  attestation {\n    allow_simulated = true\n  }";
const OPERATOR: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEWTILoZg+V7aTbtS9X7+NYffIFd2zU/ZtERUzs2tDDe operator@example";

/// The boxes' inputs and their pinned digests (`SHA256SUMS`), when they are all there.
fn box_inputs() -> Option<(PathBuf, BTreeMap<String, String>)> {
    let dir = inputs::box_inputs();
    let sums = inputs::pinned(&dir);
    let complete = ["linuxx64.efi.stub", "vmlinuz", "init.tar", "safebox-agent", "sshd"]
        .iter()
        .all(|name| sums.contains_key(*name) && dir.join(name).is_file());
    complete.then_some((dir, sums))
}

/// The image (read from the inputs where they are) and the boxes `boxes` (HCL).
fn config(dir: &Path, sums: &BTreeMap<String, String>, boxes: &str) -> String {
    let pin = |name: &str| {
        format!(
            "source = \"{}\"\n    sha256 = \"{}\"",
            dir.join(name).display(),
            sums[name]
        )
    };
    format!(
        r#"
resource "safebox_image" "box" {{
  name              = "attestable-box"
  format            = "uki"
  source_date_epoch = 1700000000
  boot_stub {{
    {stub}
  }}
  kernel {{
    {kernel}
  }}
  cmdline = "{CMDLINE}"
  layer {{
    name   = "init"
    {init}
  }}
  layer {{
    name        = "agent"
    destination = "/usr/bin/safebox-agent"
    {agent}
  }}
  dev_access {{
    ssh_authorized_keys = ["{OPERATOR}"]
    sshd {{
      {sshd}
    }}
  }}
}}

resource "safebox_enclave" "prod" {{
  image_id   = safebox_image.box.id
  cpu_count  = 1
  memory_mib = 512
}}

resource "safebox_enclave" "dev" {{
  image_id   = safebox_image.box.id
  variant    = "dev"
  cpu_count  = 1
  memory_mib = 512
}}
{boxes}"#,
        stub = pin("linuxx64.efi.stub"),
        kernel = pin("vmlinuz"),
        init = pin("init.tar"),
        agent = pin("safebox-agent"),
        sshd = pin("sshd").replace('\n', "\n  "),
    )
}

/// What the local backend recorded of the booted box `address` (`box-qemu.json` in its folder).
fn qemu_record(state_dir: &Path, state: &Value, address: &str) -> Value {
    let id = resource_values(state, address).expect("box in state")["id"]
        .as_str()
        .expect("box id")
        .to_owned();
    let record: Value = serde_json::from_slice(
        &fs::read(state_dir.join("boxes").join(&id).join("box-qemu.json")).expect("QEMU record"),
    )
    .expect("QEMU record JSON");
    record["booted"].clone()
}

/// The box `address`'s QEMU command line.
fn qemu_args(state_dir: &Path, state: &Value, address: &str) -> Vec<String> {
    let pid = qemu_record(state_dir, state, address)["qemu"]["pid"]
        .as_u64()
        .expect("QEMU pid");
    fs::read(format!("/proc/{pid}/cmdline"))
        .expect("QEMU runs")
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The first line `endpoint` (`HOST:PORT`) sends, waiting up to a minute for sshd to start.
fn banner(endpoint: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = std::net::TcpStream::connect(endpoint)
            .ok()
            .and_then(|stream| {
                stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                let mut line = String::new();
                BufReader::new(stream.take(255)).read_line(&mut line).ok()?;
                Some(line)
            })
            .unwrap_or_default();
        if !line.is_empty() || Instant::now() > deadline {
            return line;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Each box attested to its variant's planned NitroTPM PCRs, which it also expects.
fn assert_attested_as_planned(state: &Value) {
    let image = resource_values(state, IMAGE).expect("image in state");
    for (address, variant) in [(PROD, "prod"), (DEV, "dev")] {
        let enclave = resource_values(state, address).expect("box in state");
        assert_eq!(enclave["status"], "attested", "{address}");
        assert_eq!(enclave["attestation"]["simulated"], true, "{address}");
        let id = enclave["id"].as_str().unwrap();
        assert_eq!(
            enclave["attestation"]["module_id"],
            format!("local-{id}-tpm"),
            "{address}"
        );
        let mut expected: Vec<&str> = enclave["expected_pcrs"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        expected.sort_by_key(|i| i.parse::<u32>().unwrap_or(u32::MAX));
        assert_eq!(
            expected,
            ["4", "7", "12"],
            "{address} expects the image's NitroTPM PCRs"
        );
        for pcr in ["4", "7", "12"] {
            let planned = &image[format!("{variant}_measurements")][format!("pcr{pcr}")];
            assert!(planned.as_str().is_some_and(|p| p.len() == 96), "{variant} pcr{pcr}");
            assert_eq!(&enclave["attestation"]["pcrs"][pcr], planned, "{address} PCR{pcr}");
            assert_eq!(&enclave["expected_pcrs"][pcr], planned, "{address} expects PCR{pcr}");
        }
    }
    assert_ne!(
        resource_values(state, PROD).unwrap()["attestation"]["pcrs"]["4"],
        resource_values(state, DEV).unwrap()["attestation"]["pcrs"]["4"],
        "the dev disk boots another UKI"
    );
}

/// Changes one byte of the UKI (its command line's last digit) inside the disk `disk`, writing a
/// new file over it (a running QEMU keeps the file it opened), and rewrites the digest the
/// image's record pins to match; returns what to put back.
fn tamper(disk: &Path, record: &Path) -> (Vec<u8>, Vec<u8>) {
    let original = fs::read(disk).unwrap();
    let original_record = fs::read(record).unwrap();
    // The UKI's .cmdline section holds the bytes as they are; the manifest beside it on the ESP
    // holds them as a JSON string, after a quote.
    let at: Vec<usize> = original
        .windows(CMDLINE.len())
        .enumerate()
        .filter(|(i, w)| *w == CMDLINE.as_bytes() && *i > 0 && original[i - 1] != b'"')
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the UKI's command line, once: {at:?}");
    let mut bytes = original.clone();
    let last = at[0] + CMDLINE.len() - 1;
    assert_eq!(bytes[last], b'4');
    bytes[last] = b'5';
    let staged = disk.with_extension("tampered");
    fs::write(&staged, &bytes).unwrap();
    fs::rename(&staged, disk).unwrap();
    let mut image: Value = serde_json::from_slice(&original_record).unwrap();
    image["prod_measurements"]["disk_sha256"] = Value::String(hex::encode(Sha256::digest(&bytes)));
    fs::write(record, serde_json::to_vec(&image).unwrap()).unwrap();
    (original, original_record)
}

#[test]
fn uki_boxes_boot_their_disks_attest_as_planned_and_fail_closed_on_a_changed_uki() {
    let Some((dir, sums)) = box_inputs() else {
        return inputs::missing(&format!(
            "the boxes' inputs are missing in {}: run scripts/guest-layer",
            inputs::box_inputs().display()
        ));
    };
    for tool in ["qemu-system-x86_64", "swtpm"] {
        if std::process::Command::new(tool).arg("--version").output().is_err() {
            return inputs::missing(&format!("{tool} is missing: run scripts/setup"));
        }
    }
    let mut ws = Workspace::new();
    let state_dir = ws.state_dir();
    let step = Instant::now();
    ws.write_config(SIMULATED, &config(&dir, &sums, ""));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    println!("image and both boxes applied in {:.1}s", step.elapsed().as_secs_f64());

    let state = ws.state();
    assert_attested_as_planned(&state);
    let prod = resource_values(&state, PROD).unwrap().clone();
    let dev = resource_values(&state, DEV).unwrap().clone();
    assert!(prod["endpoint"]
        .as_str()
        .is_some_and(|e| e.starts_with("http://127.0.0.1:")));
    assert_eq!(prod["ssh_endpoint"], Value::Null, "a prod box has no SSH");
    let ssh = dev["ssh_endpoint"]
        .as_str()
        .expect("a dev box has an ssh_endpoint")
        .to_owned();
    assert!(ssh.starts_with("127.0.0.1:"), "{ssh}");
    let greeting = banner(&ssh);
    assert!(
        greeting.starts_with("SSH-2.0-"),
        "the dev box's sshd greets: {greeting:?}"
    );
    println!("dev box: {ssh} answers {}", greeting.trim());
    for address in [PROD, DEV] {
        let booted = qemu_record(&state_dir, &state, address);
        println!(
            "{address}: booted under {} in {:.1}s",
            booted["accelerator"].as_str().unwrap_or("?"),
            booted["boot_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
    }
    // QEMU forwards the prod box's agent port only, the dev box's agent port and port 22.
    for (address, forwards) in [(PROD, 1), (DEV, 2)] {
        let args = qemu_args(&state_dir, &state, address);
        let netdev = args
            .iter()
            .find(|a| a.contains("hostfwd="))
            .expect("a user-mode netdev");
        assert!(netdev.contains("restrict=on"), "{netdev}");
        assert_eq!(
            netdev.matches("hostfwd=tcp:127.0.0.1:0-:").count(),
            forwards,
            "{address}: {netdev}"
        );
        assert!(netdev.contains("-:8443"), "{netdev}");
        assert_eq!(netdev.contains("-:22"), address == DEV, "{address}: {netdev}");
    }

    // Refresh re-attests both boxes: nothing to change.
    let step = Instant::now();
    ws.plan_is_empty().unwrap_or_else(|e| panic!("after apply: {e}"));
    println!("refresh re-attested both boxes in {:.1}s", step.elapsed().as_secs_f64());

    // An enclave's PCR0 cannot be expected of a NitroTPM document.
    ws.write_config(
        SIMULATED,
        &config(&dir, &sums, "").replacen(
            "  image_id   = safebox_image.box.id\n  cpu_count  = 1\n",
            &format!(
                "  image_id   = safebox_image.box.id\n  expected_pcrs = {{ \"0\" = \"{}\" }}\n  cpu_count  = 1\n",
                "ab".repeat(48)
            ),
            1,
        ),
    );
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    for needle in [
        "Expected PCR of the other kind of box",
        "expected_pcrs[\"0\"]",
        "a NitroTPM document (nitrotpm_pcrs), whose image PCRs are PCR4, PCR7, PCR12",
    ] {
        assert!(mentions(&output, needle), "{needle}: {output}");
    }

    // A disk whose UKI is not the planned one, its digest rewritten where the backend checks it.
    let image = resource_values(&state, IMAGE).unwrap();
    let disk = PathBuf::from(image["prod_artifact"].as_str().unwrap());
    let record = state_dir
        .join("images")
        .join(format!("{}.json", image["id"].as_str().unwrap()));
    let (original, original_record) = tamper(&disk, &record);
    let tampered_box = "resource \"safebox_enclave\" \"tampered\" {\n  image_id   = safebox_image.box.id\n  cpu_count  = 1\n  memory_mib = 512\n}\n";
    ws.write_config(SIMULATED, &config(&dir, &sums, tampered_box));
    let step = Instant::now();
    // Without refresh: the image's own check would see its record rewritten.
    let out = ws.terraform(&["apply", "-auto-approve", "-refresh=false", "-input=false", "-no-color"]);
    let output = text(&out);
    println!("the tampered box failed in {:.1}s", step.elapsed().as_secs_f64());
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(
        mentions(&output, "Attestation failed: the box was stopped") && mentions(&output, "PCR4 is"),
        "{output}"
    );
    let mut boxes: Vec<String> = fs::read_dir(state_dir.join("boxes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut expected = vec![
        prod["id"].as_str().unwrap().to_owned(),
        dev["id"].as_str().unwrap().to_owned(),
    ];
    boxes.sort();
    expected.sort();
    assert_eq!(boxes, expected, "the tampered box's folder is gone");
    assert_eq!(
        processes::working_in(&state_dir.join("boxes")).len(),
        4,
        "QEMU and swtpm of the prod and dev boxes, nothing of the tampered one"
    );

    fs::write(&record, original_record).unwrap();
    fs::write(disk.with_extension("restored"), &original).unwrap();
    fs::rename(disk.with_extension("restored"), &disk).unwrap();
    ws.write_config(SIMULATED, &config(&dir, &sums, ""));
    let step = Instant::now();
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    println!("destroyed in {:.1}s", step.elapsed().as_secs_f64());
    assert_eq!(
        processes::working_in(ws.path()),
        Vec::<u32>::new(),
        "destroy left processes"
    );
    let left = ws.state_dir_leftovers();
    assert!(left.is_empty(), "destroy left files in state_dir: {left:?}");
}
