//! The acceptance test of `format = "uki"`: build both variants from Debian's stub, kernel and
//! busybox (made by `scripts/uki-inputs`), twice, in different folders with different TZ, umask
//! and input mtimes, and require identical bytes; then boot each variant's disk under
//! `qemu-system-x86_64 -machine q35 -nodefaults` with OVMF (Secure Boot off) and an swtpm TPM 2.0,
//! read PCR4, PCR7 and PCR12 from the guest's serial console, and require the plan-time values.
//!
//! Needs: the inputs (`scripts/uki-inputs`), qemu-system-x86, ovmf, swtpm (`scripts/setup`
//! installs them). Under `CI=true` anything missing fails the test; elsewhere it is skipped with
//! one line saying what to run. KVM is used when it works, else TCG (a few minutes at most).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use safebox::image::build::{BuildOptions, ImageBuild};
use safebox::image::spec::{DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
use safebox::image::Variant;
use sha2::{Digest, Sha256};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// A boot under TCG took about 30 s on two cores; this leaves room for a slow CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(480);

/// Fails under CI, skips elsewhere, saying what to do.
fn missing(what: &str) -> bool {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{what}");
    println!("skipped: {what}");
    true
}

fn inputs_dir() -> PathBuf {
    std::env::var_os("SAFEBOX_UKI_INPUTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.uki-inputs"),
        PathBuf::from,
    )
}

/// The pinned inputs: file name to SHA-256, from `SHA256SUMS`.
fn pinned(dir: &Path) -> Option<BTreeMap<String, String>> {
    let text = fs::read_to_string(dir.join("SHA256SUMS")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(sha, name)| (name.to_owned(), sha.to_owned()))
            .collect(),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Copies the inputs into `dir` with the given mtime and mode, and returns the spec.
fn spec_in(dir: &Path, inputs: &Path, sums: &BTreeMap<String, String>, mtime: SystemTime, mode: u32) -> ImageSpec {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    let sshd: Vec<u8> = (0..65_536u32).map(|i| (i * 31 % 253) as u8).collect();
    let mut files: Vec<(&str, Vec<u8>)> = ["linuxx64.efi.stub", "vmlinuz", "init.tar"]
        .into_iter()
        .map(|name| (name, fs::read(inputs.join(name)).unwrap()))
        .collect();
    files.push(("sshd", sshd.clone()));
    for (name, data) in &files {
        let path = dir.join(name);
        fs::write(&path, data).unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let pin = |name: &str| InputRef {
        source: name.to_owned(),
        sha256: sums.get(name).cloned().unwrap_or_else(|| sha256_hex(&sshd)),
    };
    ImageSpec {
        name: "uki-boot-test".into(),
        source_date_epoch: 1_700_000_000,
        kernel: pin("vmlinuz"),
        cmdline: "console=ttyS0 panic=-1 loglevel=4".into(),
        layers: vec![LayerSpec {
            name: "init".into(),
            input: pin("init.tar"),
            destination: None,
        }],
        dev_access: Some(DevAccessSpec {
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEWT test@safebox".into()],
            sshd: pin("sshd"),
        }),
        format: ImageFormat::Uki,
        boot_stub: Some(pin("linuxx64.efi.stub")),
    }
}

fn build(dir: &Path, spec: &ImageSpec) -> ImageBuild {
    ImageBuild::load_or_build(
        spec,
        &BuildOptions {
            base_dir: dir,
            cache_dir: &dir.join("cache"),
            progress: None,
        },
    )
    .unwrap()
}

fn files_of(build: &ImageBuild, dir: &Path, variant: Variant) -> (Vec<u8>, PathBuf) {
    let mut uki = Vec::new();
    let written = build.write_uki(variant, &mut uki).unwrap();
    assert_eq!(written, build.measurements(variant).image_sha256, "{variant} UKI");
    let disk_path = dir.join(format!("{variant}.disk"));
    let _ = fs::remove_file(&disk_path);
    let mut disk = fs::File::create(&disk_path).unwrap();
    let layout = build.write_disk(variant, &mut disk).unwrap();
    assert_eq!(Some(layout.size), build.disk_len(variant));
    (uki, disk_path)
}

/// A process group killed (and reaped) when dropped, whatever path the test takes.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

fn spawn(command: &mut Command) -> Group {
    Group(command.process_group(0).spawn().unwrap())
}

/// Boots `disk`; returns the PCR lines' values (index to lower-case hex), the variant line and
/// the accelerator used, or `None` if that accelerator did not get the guest to the end.
fn boot(disk: &Path, kvm: bool) -> Option<(BTreeMap<u32, String>, String, Duration)> {
    let work = tempfile::tempdir().unwrap();
    let vars = work.path().join("vars.fd");
    fs::copy(OVMF_VARS, &vars).unwrap();
    let socket = work.path().join("swtpm.sock");
    let _swtpm = spawn(
        Command::new("swtpm")
            .args([
                "socket",
                "--tpm2",
                "--flags",
                "not-need-init,startup-clear",
                "--tpmstate",
            ])
            .arg(format!("dir={}", work.path().display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "swtpm did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let accel = if kvm {
        ["-accel", "kvm", "-cpu", "host"]
    } else {
        ["-accel", "tcg", "-cpu", "max"]
    };
    let mut qemu = spawn(
        Command::new("qemu-system-x86_64")
            .args([
                "-nodefaults",
                "-machine",
                "q35",
                "-m",
                "1024",
                "-smp",
                "1",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(accel)
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()))
            .arg("-chardev")
            .arg(format!("socket,id=tpm,path={}", socket.display()))
            .args([
                "-tpmdev",
                "emulator,id=tpm0,chardev=tpm",
                "-device",
                "tpm-tis,tpmdev=tpm0",
            ])
            .arg("-drive")
            .arg(format!(
                "if=none,id=disk,format=raw,readonly=on,file={}",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=disk,bootindex=0", "-serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = qemu.0.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        // The console mixes firmware escape codes with lines; read bytes, split on newlines.
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if lines.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                break;
            }
        }
    });
    let mut pcrs = BTreeMap::new();
    let mut variant = String::new();
    let deadline = started + BOOT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match received.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no SAFEBOX-DONE within {BOOT_TIMEOUT:?}"),
            // QEMU exited (or could not run this accelerator) before the guest finished.
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        };
        let line = line.trim_end_matches('\r');
        if let Some(at) = line.find("SAFEBOX-PCR sha384 ") {
            let mut fields = line[at..].split_whitespace().skip(2);
            let index: u32 = fields.next().and_then(|n| n.parse().ok()).unwrap();
            pcrs.insert(index, fields.next().unwrap_or_default().to_ascii_lowercase());
        } else if let Some(at) = line.find("SAFEBOX-VARIANT ") {
            variant = line[at + 16..].trim().to_owned();
        } else if line.contains("SAFEBOX-DONE") {
            return Some((pcrs, variant, started.elapsed()));
        }
    }
}

#[test]
fn both_variants_boot_and_measure_as_planned() {
    let inputs = inputs_dir();
    let Some(sums) = pinned(&inputs) else {
        missing(&format!(
            "no UKI test inputs in {}: run scripts/uki-inputs",
            inputs.display()
        ));
        return;
    };
    for (tool, package) in [("qemu-system-x86_64", "qemu-system-x86"), ("swtpm", "swtpm")] {
        if Command::new(tool).arg("--version").output().is_err()
            && missing(&format!(
                "{tool} is not installed: run scripts/setup (apt-get install {package})"
            ))
        {
            return;
        }
    }
    if !Path::new(OVMF_CODE).exists()
        && missing(&format!(
            "{OVMF_CODE} is missing: run scripts/setup (apt-get install ovmf)"
        ))
    {
        return;
    }

    // Two builds: different folders, input mtimes and modes, TZ and umask.
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (root.path().join("a"), root.path().join("first/second/b"));
    let a = build(&a_dir, &spec_in(&a_dir, &inputs, &sums, SystemTime::UNIX_EPOCH, 0o644));
    std::env::set_var("TZ", "Pacific/Kiritimati");
    let old_umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let b = build(&b_dir, &spec_in(&b_dir, &inputs, &sums, SystemTime::now(), 0o600));
    rustix::process::umask(old_umask);
    std::env::remove_var("TZ");
    assert_eq!(a.manifest(), b.manifest());

    let mut times = Vec::new();
    for variant in [Variant::Dev, Variant::Prod] {
        let (uki_a, disk_a) = files_of(&a, &a_dir, variant);
        let (uki_b, disk_b) = files_of(&b, &b_dir, variant);
        assert!(uki_a == uki_b, "{variant} UKIs differ between the two builds");
        let digest = |path: &Path| {
            let mut hasher = Sha256::new();
            std::io::copy(&mut fs::File::open(path).unwrap(), &mut hasher).unwrap();
            hex::encode(hasher.finalize())
        };
        let m = a.measurements(variant);
        assert_eq!(
            Some(digest(&disk_a)),
            m.disk_sha256,
            "{variant} disk file = disk_sha256"
        );
        assert_eq!(
            digest(&disk_a),
            digest(&disk_b),
            "{variant} disks differ between the two builds"
        );
        assert_eq!(uki_a.len() as u64, a.uki_len(variant).unwrap());

        let kvm = fs::File::options().read(true).write(true).open("/dev/kvm").is_ok();
        let (pcrs, booted, took, accel) = match kvm.then(|| boot(&disk_a, true)).flatten() {
            Some((p, v, t)) => (p, v, t, "kvm"),
            None => {
                let (p, v, t) = boot(&disk_a, false).expect("QEMU exited before the guest printed SAFEBOX-DONE");
                (p, v, t, "tcg")
            }
        };
        println!(
            "{variant}: booted under {accel} in {:.1}s; PCRs {pcrs:?}",
            took.as_secs_f64()
        );
        times.push((variant, accel, took));
        assert_eq!(
            booted,
            variant.as_str(),
            "the {variant} disk booted the {booted} initrd"
        );
        for (index, planned) in [(4, &m.pcr4), (7, &m.pcr7), (12, &m.pcr12)] {
            assert_eq!(
                pcrs.get(&index),
                planned.as_ref(),
                "{variant} PCR{index}: guest vs plan"
            );
        }
    }
    let _ = std::io::stdout().flush();
    let mut report = String::new();
    for (variant, accel, took) in times {
        report.push_str(&format!("{variant} {accel} {:.1}s ", took.as_secs_f64()));
    }
    println!("boot times: {report}");
}
