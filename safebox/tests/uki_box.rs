//! Boxes of a `"uki"` image on the local backend: both variants built with the real init layer
//! (busybox, the static agent, OpenSSH's sshd for dev) from `scripts/guest-layer`, their disks
//! booted by `safebox::qemu` under QEMU + OVMF + swtpm, and the agent inside answering through
//! the loopback forward:
//!
//! - prod: a document for a fresh nonce verifies as a NitroTPM document under the local
//!   simulated root with PCR4, PCR7 and PCR12 equal to the plan's; the box key reached the agent
//!   (a signed management request is served, an unsigned one refused); QEMU forwards the agent
//!   port and nothing else; the published disk is opened read-only and is unchanged;
//! - dev: the same with the dev plan's PCRs, and an `SSH-2.0-` banner on its ssh endpoint, then
//!   a real login with the key the image authorises;
//! - a copy of the prod disk with one byte of its UKI changed boots, and its document fails
//!   verification naming PCR4;
//! - after each stop, no QEMU or swtpm process and no file of the box remain.
//!
//! Needs: `scripts/guest-layer` (inputs in `.box-inputs`, or `SAFEBOX_BOX_INPUTS`), QEMU, OVMF,
//! swtpm and OpenSSH's client (`scripts/setup`). Under `CI=true` anything missing fails the test;
//! elsewhere it is skipped with one line saying what to run. Boot times are printed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use safebox::agent_api::AgentClient;
use safebox::attest::document::DocumentKind;
use safebox::attest::simulated::SimulatedNitro;
use safebox::attest::verify::{verify, Policy};
use safebox::attest::AttestationError;
use safebox::box_key::BoxKey;
use safebox::image::build::{BuildOptions, ImageBuild};
use safebox::image::spec::{DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
use safebox::image::Variant;
use safebox::qemu::{self, QemuBox, QemuBoxSpec};
use sha2::{Digest, Sha256};

const CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4";

/// Fails under CI, skips elsewhere, saying what to do.
fn missing(what: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{what}");
    println!("skipped: {what}");
}

fn inputs_dir() -> PathBuf {
    std::env::var_os("SAFEBOX_BOX_INPUTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.box-inputs"),
        PathBuf::from,
    )
}

/// The pinned inputs: file name to SHA-256, from `SHA256SUMS`.
fn pinned(dir: &Path) -> Option<BTreeMap<String, String>> {
    let text = fs::read_to_string(dir.join("SHA256SUMS")).ok()?;
    let sums: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sha, name)| (name.to_owned(), sha.to_owned()))
        .collect();
    ["linuxx64.efi.stub", "vmlinuz", "init.tar", "safebox-agent", "sshd"]
        .iter()
        .all(|name| sums.contains_key(*name) && dir.join(name).is_file())
        .then_some(sums)
}

fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    std::io::copy(&mut fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// Stops the box in `dir` whatever path the test takes.
struct Running<'a> {
    dir: &'a Path,
    booted: QemuBox,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = qemu::stop(self.dir);
    }
}

/// Boots `disk` as box `name` of `nitro`'s hierarchy.
fn boot<'a>(dir: &'a Path, disk: &Path, ssh: bool, key: &BoxKey, nitro: &SimulatedNitro, name: &str) -> Running<'a> {
    let booted = qemu::launch(&QemuBoxSpec {
        disk,
        dir,
        ssh,
        box_key: &key.public_hex(),
        module_id: &format!("local-{name}-tpm"),
        attestation: nitro,
        cpu_count: 1,
        memory_mib: 512,
        boot_timeout: qemu::DEFAULT_BOOT_TIMEOUT,
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    println!(
        "{name}: booted under {} in {:.1}s (agent at {}, ssh {:?})",
        booted.accelerator,
        booted.boot_ms as f64 / 1000.0,
        booted.endpoint,
        booted.ssh_endpoint
    );
    Running { dir, booted }
}

/// A fresh document from the box, and the nonce it was asked for.
fn document(running: &Running<'_>) -> (Vec<u8>, Vec<u8>) {
    let client = AgentClient::new(&running.booted.endpoint, Duration::from_secs(30)).unwrap();
    let nonce: [u8; 32] = rand::random();
    (
        client.attestation(&nonce, None, Some(b"uki-box-test")).unwrap(),
        nonce.to_vec(),
    )
}

fn plan_pcrs(build: &ImageBuild, variant: Variant) -> BTreeMap<u32, Vec<u8>> {
    let m = build.measurements(variant);
    [(4, &m.pcr4), (7, &m.pcr7), (12, &m.pcr12)]
        .into_iter()
        .map(|(i, v)| {
            (
                i,
                hex::decode(v.as_deref().expect("a UKI plan has PCR4, PCR7, PCR12")).unwrap(),
            )
        })
        .collect()
}

/// What QEMU was started with.
fn qemu_args(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The access mode QEMU holds `path` open with, if it does (O_ACCMODE of fdinfo's flags).
fn open_mode(pid: u32, path: &Path) -> Option<u32> {
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let entry = entry.ok()?;
        if fs::read_link(entry.path()).ok().as_deref() == Some(path) {
            let info =
                fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy())).ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
            return u32::from_str_radix(flags, 8).ok().map(|f| f & 0o3);
        }
    }
    None
}

/// Processes whose working directory is inside `root` (the boxes' QEMU and swtpm run in their
/// folders).
fn processes_in(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cwd) = fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if cwd.starts_with(root) {
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            {
                found.push(format!("{} {}", entry.file_name().to_string_lossy(), stat));
            }
        }
    }
    found
}

fn assert_gone(running: Running<'_>, root: &Path) {
    let (dir, booted) = (running.dir.to_path_buf(), running.booted.clone());
    drop(running);
    assert!(!booted.qemu.is_running(), "QEMU still runs after stop");
    assert!(!booted.swtpm.is_running(), "swtpm still runs after stop");
    assert!(!dir.exists(), "{} remains after stop", dir.display());
    assert_eq!(processes_in(root), Vec::<String>::new(), "processes left behind");
    assert!(qemu::find(&dir).is_none());
}

/// Where the UKI sits in `disk` (its FAT32 file is contiguous).
fn uki_offset(disk: &[u8], uki: &[u8]) -> usize {
    let head = &uki[..4096];
    (0..disk.len() - uki.len())
        .step_by(512)
        .find(|at| &disk[*at..*at + 4096] == head && &disk[*at..*at + uki.len()] == uki)
        .expect("the UKI is stored whole and contiguous in the ESP")
}

#[test]
fn boxes_boot_the_published_disks_and_attest_as_planned() {
    let inputs = inputs_dir();
    let Some(sums) = pinned(&inputs) else {
        return missing(&format!(
            "no box inputs in {}: run scripts/guest-layer",
            inputs.display()
        ));
    };
    if let Err(e) = qemu::check_tools() {
        return missing(&e.to_string());
    }
    for tool in ["ssh", "ssh-keygen"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return missing(&format!(
                "{tool} is missing: run scripts/setup (apt-get install openssh-client)"
            ));
        }
    }

    // QEMU's temporary overlay (snapshot=on) goes to the box's folder, not to /var/tmp.
    let overlays = || -> Vec<String> {
        fs::read_dir("/var/tmp")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("vl."))
                    .collect()
            })
            .unwrap_or_default()
    };
    let overlays_before = overlays();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // The operator's key, which the dev image authorises.
    let key_path = root.join("operator");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "operator@safebox-test", "-f"])
        .arg(&key_path)
        .status()
        .unwrap();
    assert!(made.success());
    let operator_key = fs::read_to_string(key_path.with_extension("pub")).unwrap();

    let pin = |name: &str| InputRef {
        source: inputs.join(name).display().to_string(),
        sha256: sums[name].clone(),
    };
    let spec = ImageSpec {
        name: "uki-box-test".into(),
        source_date_epoch: 1_700_000_000,
        kernel: pin("vmlinuz"),
        cmdline: CMDLINE.into(),
        layers: vec![
            LayerSpec {
                name: "init".into(),
                input: pin("init.tar"),
                destination: None,
            },
            LayerSpec {
                name: "agent".into(),
                input: pin("safebox-agent"),
                destination: Some("/usr/bin/safebox-agent".into()),
            },
        ],
        dev_access: Some(DevAccessSpec {
            ssh_authorized_keys: vec![operator_key.trim().to_owned()],
            sshd: pin("sshd"),
        }),
        format: ImageFormat::Uki,
        boot_stub: Some(pin("linuxx64.efi.stub")),
    };
    let started = Instant::now();
    let build = ImageBuild::load_or_build(
        &spec,
        &BuildOptions {
            base_dir: root,
            cache_dir: &root.join("cache"),
            progress: None,
        },
    )
    .unwrap();
    // The published artifacts, as the local backend keeps them.
    let published = root.join("artifacts");
    fs::create_dir(&published).unwrap();
    let disk = |variant: Variant| {
        let path = published.join(format!("{variant}.img"));
        build
            .write_disk(variant, &mut fs::File::create(&path).unwrap())
            .unwrap();
        assert_eq!(Some(sha256_file(&path)), build.measurements(variant).disk_sha256);
        path
    };
    let (prod_disk, dev_disk) = (disk(Variant::Prod), disk(Variant::Dev));
    println!("built both disks in {:.1}s", started.elapsed().as_secs_f64());

    let nitro_dir = root.join("state/attestation");
    let nitro = SimulatedNitro::open_or_create(&nitro_dir).unwrap();
    let trust = nitro.trust_root().unwrap();
    let boxes = root.join("state/boxes");
    let policy = |pcrs: BTreeMap<u32, Vec<u8>>, nonce: Vec<u8>| Policy {
        root: &trust,
        at_ms: now_ms(),
        expected_pcrs: pcrs,
        nonce: Some(nonce),
        max_age_ms: Some(600_000),
        allow_debug: false,
        kind: Some(DocumentKind::NitroTpm),
    };

    // Prod.
    let prod_sha = sha256_file(&prod_disk);
    let prod_key = BoxKey::generate();
    let prod_dir = boxes.join("prod");
    let prod = boot(&prod_dir, &prod_disk, false, &prod_key, &nitro, "prod");
    assert_eq!(qemu::find(&prod_dir).as_ref(), Some(&prod.booted));
    assert_eq!(prod.booted.ssh_endpoint, None);
    let (doc, nonce) = document(&prod);
    let verified = verify(&doc, &policy(plan_pcrs(&build, Variant::Prod), nonce.clone()), None)
        .unwrap_or_else(|e| panic!("the prod box's document: {e}"));
    let attested = &verified.document;
    assert_eq!(attested.kind, DocumentKind::NitroTpm);
    assert_eq!(attested.module_id, "local-prod-tpm");
    assert_eq!(attested.pcrs.len(), 24);
    assert_eq!(attested.user_data.as_deref(), Some(&b"uki-box-test"[..]));
    assert!(
        attested.certificate.windows(9).any(|w| w == b"SIMULATED"),
        "the leaf says it is simulated"
    );
    // A NitroTPM document is not an enclave document.
    let mut enclave = policy(BTreeMap::new(), nonce);
    enclave.kind = Some(DocumentKind::Enclave);
    assert!(matches!(
        verify(&doc, &enclave, None),
        Err(AttestationError::Kind { .. })
    ));
    // The box key came in through fw_cfg: signed management is served, unsigned refused.
    let agent_key = hex::encode(attested.public_key.as_ref().unwrap());
    let client = AgentClient::new(&prod.booted.endpoint, Duration::from_secs(10)).unwrap();
    let refused = client.link_status("l1").unwrap_err().to_string();
    assert!(refused.contains("401"), "{refused}");
    let signed = client.clone().signed(prod_key, &agent_key);
    assert_eq!(
        signed.link_status("l1").unwrap(),
        None,
        "a signed request reaches the agent"
    );
    // QEMU forwards the agent port and nothing else, from loopback.
    let args = qemu_args(prod.booted.qemu.pid);
    let forwards: Vec<&String> = args.iter().filter(|a| a.contains("hostfwd")).collect();
    assert_eq!(forwards.len(), 1, "{forwards:?}");
    assert!(forwards[0].contains("restrict=on"));
    assert_eq!(forwards[0].matches("hostfwd=").count(), 1, "{forwards:?}");
    assert!(forwards[0].contains("hostfwd=tcp:127.0.0.1:0-:8443"), "{forwards:?}");
    // The published disk is read, never written.
    assert_eq!(
        open_mode(prod.booted.qemu.pid, &prod_disk),
        Some(0),
        "QEMU opens the artifact O_RDONLY"
    );
    assert_gone(prod, root);
    assert_eq!(sha256_file(&prod_disk), prod_sha, "the artifact is unchanged");

    // Dev: its own PCRs, and SSH.
    let dev_dir = boxes.join("dev");
    let dev = boot(&dev_dir, &dev_disk, true, &BoxKey::generate(), &nitro, "dev");
    let (doc, nonce) = document(&dev);
    let dev_pcrs = plan_pcrs(&build, Variant::Dev);
    assert_ne!(dev_pcrs[&4], plan_pcrs(&build, Variant::Prod)[&4]);
    verify(&doc, &policy(dev_pcrs, nonce), None).unwrap_or_else(|e| panic!("the dev box's document: {e}"));
    let ssh_endpoint = dev.booted.ssh_endpoint.clone().expect("a dev box has an ssh endpoint");
    let banner = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut line = Vec::new();
            if let Ok(mut stream) = std::net::TcpStream::connect(&ssh_endpoint) {
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut byte = [0u8; 1];
                while !line.ends_with(b"\n") && line.len() < 255 && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    line.push(byte[0]);
                }
            }
            if !line.is_empty() || Instant::now() > deadline {
                break String::from_utf8_lossy(&line).into_owned();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    assert!(banner.starts_with("SSH-2.0-"), "the dev box's sshd greets: {banner:?}");
    println!("dev: sshd answers {}", banner.trim());
    let (host, port) = ssh_endpoint.rsplit_once(':').unwrap();
    let login = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            "-p",
            port,
            "-i",
        ])
        .arg(&key_path)
        .arg(format!("root@{host}"))
        .arg("cat /proc/cmdline; ls /usr/sbin/sshd /usr/bin/safebox-agent")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&login.stdout);
    assert!(
        login.status.success() && said.contains(CMDLINE),
        "ssh login to the dev box: {said} {}; the box's console: {}",
        String::from_utf8_lossy(&login.stderr),
        String::from_utf8_lossy(&fs::read(dev_dir.join("console.log")).unwrap_or_default())
    );
    assert_gone(dev, root);

    // A tampered prod disk: one byte of the UKI's command line changed.
    let mut uki = Vec::new();
    build.write_uki(Variant::Prod, &mut uki).unwrap();
    let mut bytes = fs::read(&prod_disk).unwrap();
    let at = uki_offset(&bytes, &uki);
    let in_uki = uki
        .windows(CMDLINE.len())
        .position(|w| w == CMDLINE.as_bytes())
        .expect("the UKI carries the command line");
    let byte = at + in_uki + CMDLINE.len() - 1;
    assert_eq!(bytes[byte], b'4');
    bytes[byte] = b'5';
    let tampered_disk = root.join("tampered.img");
    fs::write(&tampered_disk, &bytes).unwrap();
    drop(bytes);
    let tampered_dir = boxes.join("tampered");
    let tampered = boot(
        &tampered_dir,
        &tampered_disk,
        false,
        &BoxKey::generate(),
        &nitro,
        "tampered",
    );
    let (doc, nonce) = document(&tampered);
    let err = verify(&doc, &policy(plan_pcrs(&build, Variant::Prod), nonce), None).unwrap_err();
    assert!(matches!(err, AttestationError::Pcr { index: 4, .. }), "{err}");
    assert!(err.to_string().starts_with("PCR4 is "), "{err}");
    println!("tampered: refused: {err}");
    assert_gone(tampered, root);

    // A launch that times out stops what it started and leaves no file.
    let late_dir = boxes.join("late");
    let err = qemu::launch(&QemuBoxSpec {
        disk: &prod_disk,
        dir: &late_dir,
        ssh: false,
        box_key: &BoxKey::generate().public_hex(),
        module_id: "local-late-tpm",
        attestation: &nitro,
        cpu_count: 1,
        memory_mib: 512,
        boot_timeout: Duration::from_secs(3),
    })
    .unwrap_err();
    assert!(matches!(err, qemu::QemuError::Timeout { seconds: 3, .. }), "{err}");
    assert!(!late_dir.exists(), "a failed launch removes the box's folder");
    assert_eq!(
        processes_in(root),
        Vec::<String>::new(),
        "a failed launch leaves no process"
    );
    assert_eq!(overlays(), overlays_before, "no QEMU overlay left in /var/tmp");
}
