//! The local box of a `"uki"` image: the variant's published disk booted under QEMU, with a
//! software TPM, exactly as EC2 boots the AMI made of the same bytes.
//!
//! [`launch`] starts two processes, each in its own process group (so Terraform's signals and
//! exit do not reach them), with the box's folder as their working directory:
//!
//! - `swtpm socket --tpm2 --tpmstate dir=swtpm --ctrl type=unixio,path=swtpm.sock --flags
//!   not-need-init,startup-clear --terminate`: a TPM 2.0 whose state lives in the box's folder
//!   and which exits when QEMU lets go of it;
//! - `qemu-system-x86_64 -nodefaults -no-user-config -machine q35`, under KVM (`-cpu host`,
//!   then `-cpu host,-arch-capabilities` for nested hosts that refuse that MSR) when `/dev/kvm`
//!   is usable and the guest stays `running` (QMP `query-status`) 1.5 s after the start, else
//!   TCG (`-cpu max`); each try with a fresh TPM; OVMF without Secure Boot (`OVMF_CODE_4M.fd`
//!   read-only, a copy of `OVMF_VARS_4M.fd` for its variables), a
//!   `tpm-tis` device on the swtpm, the disk on `virtio-blk-pci` opened with `snapshot=on` (QEMU
//!   opens the published file read-only and sends the guest's writes to a temporary overlay,
//!   which `TMPDIR` puts in the box's folder), one `virtio-net-pci` on user-mode networking with
//!   `restrict=on` (the guest reaches nothing outside) whose only forwards are
//!   `127.0.0.1:<ephemeral>` to the guest's agent port 8443 and, for a development box,
//!   `127.0.0.1:<ephemeral>` to the guest's port 22; the serial console to `console.log`, QMP on
//!   `qmp.sock`, `-sandbox on` with privilege elevation, spawning and resource control denied.
//!
//! These are the conditions under which `tests/uki_boot.rs` proved the plan's PCR4, PCR7 and
//! PCR12 (see [`crate::image::nitrotpm`]).
//!
//! The guest learns what differs per box through QEMU's firmware configuration device, never
//! the network: `-fw_cfg name=opt/safebox/config.json` (a [`crate::agent_api::BootConfig`]: the
//! box key's public half, the listen address, the module id) and `-fw_cfg
//! name=opt/safebox/attestation.pem` (the box's signing leaf of the local simulated root, a
//! [`crate::attest::simulated::SimulatedLeaf`] PEM bundle, labelled SIMULATED in every
//! certificate). QEMU reads both when it starts.
//!
//! The ephemeral ports are chosen by the kernel (`hostfwd=tcp:127.0.0.1:0-:PORT`) and read back
//! over QMP (`human-monitor-command "info usernet"`), so no port is guessed and none can be
//! taken between choosing and binding. The box is up when its agent answers `GET /health` on the
//! forwarded port; a guest that QEMU stops (`internal-error`, `shutdown`) or a process that
//! exits ends the wait with the logs' last lines.
//!
//! # The box's folder
//! Created private (mode 0700: it holds the signing key) and removed whole by [`stop`]:
//! `box-qemu.json` (the record: both processes' pid and start time, the endpoints, the
//! accelerator, the boot time; written as soon as each process starts), `vars.fd`,
//! `swtpm/` (TPM state), `swtpm.sock`, `qmp.sock`, `fw_cfg/` (the two items, mode 0600),
//! `tmp/` (QEMU's overlay), `console.log`, `qemu.log`, `swtpm.log`, `qemu-retried.log` (why a
//! KVM try was given up, when one was). A process is the box's only
//! while it runs with the recorded start time (`/proc/PID/stat` field 22), so a reused pid is
//! never signalled. A launch that fails or times out stops what it started and removes the
//! folder.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent_api::{AgentClient, BootConfig, AGENT_PORT, FW_CFG_ATTESTATION, FW_CFG_CONFIG};
use crate::attest::simulated::SimulatedNitro;
use crate::process;

/// Debian's OVMF without Secure Boot (package `ovmf`): the firmware the PCR predictions hold for.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Its variable store template.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// A boot under TCG took about 25 s here and under KVM a few seconds; a slow CI machine gets
/// several times that before a launch gives up.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The guest's SSH port (development boxes).
const SSH_PORT: u16 = 22;
/// The record in the box's folder.
const RECORD: &str = "box-qemu.json";
/// How long a stopping process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long swtpm and QMP may take to open their sockets.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(15);
/// Memory below this cannot hold OVMF, the kernel and an initrd of a few tens of MiB.
const MIN_MEMORY_MIB: u32 = 256;

/// Why a box could not be booted or stopped. Each message names the file or tool and the fix.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A tool or firmware file is not installed.
    #[error("{what} is missing: {fix}")]
    Missing {
        /// The program or file.
        what: String,
        /// How to install it.
        fix: &'static str,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The box's folder or key could not be kept private, or the signing leaf not issued.
    #[error("{0}")]
    Setup(String),
    /// QEMU or swtpm exited, or QMP misbehaved, before the box was up.
    #[error("{what}; {log}")]
    Failed {
        /// What happened.
        what: String,
        /// The last lines of the relevant log.
        log: String,
    },
    /// The agent did not answer in time.
    #[error("the box's agent did not answer within {} s (QEMU under {accelerator}); the guest's console ends: {console}", .seconds)]
    Timeout {
        /// The limit.
        seconds: u64,
        /// kvm or tcg.
        accelerator: String,
        /// The last lines of `console.log`.
        console: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> QemuError {
    let path = path.to_path_buf();
    move |source| QemuError::Io { action, path, source }
}

/// What to boot and how.
pub struct QemuBoxSpec<'a> {
    /// The variant's published disk image; read, never written.
    pub disk: &'a Path,
    /// The box's folder: created by [`launch`], removed by [`stop`]. Must not exist yet, or be
    /// empty.
    pub dir: &'a Path,
    /// Forward a host port to the guest's port 22 (the development variant).
    pub ssh: bool,
    /// The public half of the box key (64 hex digits).
    pub box_key: &'a str,
    /// The module id of the box's documents.
    pub module_id: &'a str,
    /// The local simulated root, which issues the box's signing leaf.
    pub attestation: &'a SimulatedNitro,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory, MiB (at least 256 is used).
    pub memory_mib: u32,
    /// How long the agent may take to answer.
    pub boot_timeout: Duration,
}

/// A process of a box: its pid and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoxProcess {
    /// The pid (also its process group's id).
    pub pid: u32,
    /// `/proc/PID/stat` field 22.
    pub start_time: u64,
}

impl BoxProcess {
    fn of(child: &Child) -> Option<Self> {
        let pid = child.id();
        process::start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// Whether this very process still runs (not a zombie, not a later process with its pid).
    #[must_use]
    pub fn is_running(&self) -> bool {
        process::alive(self.pid) && process::start_time(self.pid) == Some(self.start_time)
    }
}

/// A booted box.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QemuBox {
    /// QEMU.
    pub qemu: BoxProcess,
    /// swtpm.
    pub swtpm: BoxProcess,
    /// Where the agent answers: `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Where the development box's sshd answers: `127.0.0.1:PORT`; `None` for production.
    pub ssh_endpoint: Option<String>,
    /// `kvm` or `tcg`.
    pub accelerator: String,
    /// From starting QEMU to the agent's first answer, milliseconds.
    pub boot_ms: u64,
}

/// What the record holds while a launch is under way and after.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Record {
    qemu: Option<BoxProcess>,
    swtpm: Option<BoxProcess>,
    booted: Option<QemuBox>,
}

/// Checks that QEMU, swtpm and OVMF are installed.
///
/// # Errors
/// [`QemuError::Missing`] naming the first one that is not, and the package to install.
pub fn check_tools() -> Result<(), QemuError> {
    for (program, fix) in [
        (
            "qemu-system-x86_64",
            "install QEMU (apt-get install qemu-system-x86; scripts/setup does)",
        ),
        ("swtpm", "install swtpm (apt-get install swtpm; scripts/setup does)"),
    ] {
        if Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(QemuError::Missing {
                what: program.to_owned(),
                fix,
            });
        }
    }
    for file in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(file).is_file() {
            return Err(QemuError::Missing {
                what: file.to_owned(),
                fix: "install OVMF (apt-get install ovmf; scripts/setup does)",
            });
        }
    }
    Ok(())
}

/// Processes started so far, stopped (with the folder removed) unless the launch succeeds.
struct Launching<'a> {
    dir: &'a Path,
    children: Vec<Child>,
    done: bool,
}

impl Drop for Launching<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for child in &mut self.children {
            process::signal_group(child.id(), rustix::process::Signal::KILL);
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(self.dir);
    }
}

/// QEMU's option syntax doubles a comma inside a value.
fn escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Boots the box described by `spec` and waits until its agent answers.
///
/// # Errors
/// [`QemuError`]; nothing of the box is left behind then.
pub fn launch(spec: &QemuBoxSpec<'_>) -> Result<QemuBox, QemuError> {
    check_tools()?;
    let disk = fs::canonicalize(spec.disk).map_err(io("opening the disk image", spec.disk))?;
    if fs::read_dir(spec.dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(QemuError::Setup(format!(
            "the box folder {} is not empty; stop the box that used it first",
            spec.dir.display()
        )));
    }
    crate::private::create_dir(spec.dir).map_err(|e| QemuError::Setup(e.to_string()))?;
    let mut launching = Launching {
        dir: spec.dir,
        children: Vec::new(),
        done: false,
    };
    let dir = spec.dir;

    // What the guest is told, through fw_cfg only.
    let fw_cfg = dir.join("fw_cfg");
    crate::private::create_dir(&fw_cfg).map_err(|e| QemuError::Setup(e.to_string()))?;
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let leaf = spec
        .attestation
        .issue_box_leaf(spec.module_id, now_ms)
        .map_err(|e| QemuError::Setup(format!("issuing the box's signing leaf: {e}")))?;
    let config = BootConfig {
        box_key: spec.box_key.to_owned(),
        listen: Some(format!("0.0.0.0:{AGENT_PORT}")),
        module_id: Some(spec.module_id.to_owned()),
    };
    for (name, body) in [("config.json", config.to_json()), ("attestation.pem", leaf.to_pem())] {
        crate::private::write_file(&fw_cfg.join(name), body.as_bytes()).map_err(|e| QemuError::Setup(e.to_string()))?;
    }
    let vars = dir.join("vars.fd");
    fs::copy(OVMF_VARS, &vars).map_err(io("copying the OVMF variable store to", &vars))?;
    for sub in ["swtpm", "tmp"] {
        fs::create_dir(dir.join(sub)).map_err(io("creating", &dir.join(sub)))?;
    }

    let mut forwards = format!("hostfwd=tcp:127.0.0.1:0-:{AGENT_PORT}");
    if spec.ssh {
        forwards.push_str(&format!(",hostfwd=tcp:127.0.0.1:0-:{SSH_PORT}"));
    }
    let machine = Machine {
        disk: &disk,
        forwards: &forwards,
        name: spec.module_id,
        cpu_count: spec.cpu_count.max(1),
        memory_mib: spec.memory_mib.max(MIN_MEMORY_MIB),
    };
    // KVM when /dev/kvm can be opened for writing. Some nested hosts refuse the
    // IA32_ARCH_CAPABILITIES MSR that -cpu host passes on (QEMU then stops at the first
    // instruction): the next try hides it, so the guest assumes the CPU vulnerable and keeps
    // its mitigations on. Last, TCG. Each try starts with a fresh TPM. None of this touches
    // what PCR4, PCR7 and PCR12 measure.
    let kvm = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let accelerators: &[(&str, &str)] = if kvm {
        &[("kvm", "host"), ("kvm", "host,-arch-capabilities"), ("tcg", "max")]
    } else {
        &[("tcg", "max")]
    };
    let mut started = None;
    for (n, (accelerator, cpu)) in accelerators.iter().enumerate() {
        match start(dir, &machine, accelerator, cpu, &mut launching.children) {
            Ok(up) => {
                started = Some(up);
                break;
            }
            Err(e) if n + 1 < accelerators.len() => {
                for child in &mut launching.children {
                    process::signal_group(child.id(), rustix::process::Signal::KILL);
                    let _ = child.wait();
                }
                launching.children.clear();
                let note = dir.join("qemu-retried.log");
                let mut notes = fs::read_to_string(&note).unwrap_or_default();
                notes.push_str(&format!("{accelerator} -cpu {cpu}: {e}\n"));
                let _ = fs::write(&note, notes);
                for stale in ["swtpm.sock", "qmp.sock"] {
                    let _ = fs::remove_file(dir.join(stale));
                }
                let state = dir.join("swtpm");
                fs::remove_dir_all(&state).map_err(io("clearing", &state))?;
                fs::create_dir(&state).map_err(io("creating", &state))?;
            }
            Err(e) => return Err(e),
        }
    }
    let Some(Started {
        swtpm: swtpm_process,
        qemu: qemu_process,
        forwarded,
        accelerator,
        at: started,
    }) = started
    else {
        return Err(QemuError::Setup("no accelerator to try".into()));
    };
    let port_of = |guest: u16| {
        forwarded
            .iter()
            .find(|(g, _)| *g == guest)
            .map(|(_, host)| *host)
            .ok_or_else(|| QemuError::Failed {
                what: format!("QEMU forwards no host port to the guest's port {guest}"),
                log: process::log_tail(&dir.join("qemu.log")),
            })
    };
    let endpoint = format!("http://127.0.0.1:{}", port_of(AGENT_PORT)?);
    let ssh_endpoint = if spec.ssh {
        Some(format!("127.0.0.1:{}", port_of(SSH_PORT)?))
    } else {
        None
    };

    let client = AgentClient::new(&endpoint, Duration::from_secs(2)).map_err(|e| QemuError::Setup(e.to_string()))?;
    let mut checks = 0u32;
    loop {
        if client.health().is_ok() {
            break;
        }
        for (child, name, log_name) in [(0, "swtpm", "swtpm.log"), (1, "QEMU", "qemu.log")] {
            if let Ok(Some(status)) = launching.children[child].try_wait() {
                return Err(QemuError::Failed {
                    what: format!("{name} exited ({status}) before the box's agent answered"),
                    log: format!(
                        "{}; the guest's console ends: {}",
                        process::log_tail(&dir.join(log_name)),
                        process::log_tail(&dir.join("console.log"))
                    ),
                });
            }
        }
        checks += 1;
        if checks.is_multiple_of(25) {
            if let Some(stopped) = guest_stopped(dir) {
                return Err(QemuError::Failed {
                    what: format!("{stopped} before the box's agent answered"),
                    log: format!(
                        "{}; the guest's console ends: {}",
                        process::log_tail(&dir.join("qemu.log")),
                        process::log_tail(&dir.join("console.log"))
                    ),
                });
            }
        }
        if started.elapsed() > spec.boot_timeout {
            return Err(QemuError::Timeout {
                seconds: spec.boot_timeout.as_secs(),
                accelerator,
                console: process::log_tail(&dir.join("console.log")),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let booted = QemuBox {
        qemu: qemu_process,
        swtpm: swtpm_process,
        endpoint,
        ssh_endpoint,
        accelerator,
        boot_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    write_record(
        dir,
        &Record {
            qemu: Some(qemu_process),
            swtpm: Some(swtpm_process),
            booted: Some(booted.clone()),
        },
    )?;
    launching.done = true;
    Ok(booted)
}

/// The machine QEMU emulates, the same whatever the accelerator.
struct Machine<'a> {
    disk: &'a Path,
    forwards: &'a str,
    name: &'a str,
    cpu_count: u32,
    memory_mib: u32,
}

/// Both processes running and QEMU's answers.
struct Started {
    swtpm: BoxProcess,
    qemu: BoxProcess,
    /// (guest port, host port).
    forwarded: Vec<(u16, u16)>,
    accelerator: String,
    at: Instant,
}

/// How long QEMU must stay up after answering QMP before its accelerator is trusted to run the
/// guest (a refused CPU feature stops it within milliseconds of the first instruction).
const SETTLE: Duration = Duration::from_millis(1500);

/// Starts swtpm, then QEMU under `accelerator`, recording both; `children` gets them (swtpm
/// first).
fn start(
    dir: &Path,
    machine: &Machine<'_>,
    accelerator: &str,
    cpu: &str,
    children: &mut Vec<Child>,
) -> Result<Started, QemuError> {
    let log = |name: &str| -> Result<File, QemuError> {
        let path = dir.join(name);
        File::create(&path).map_err(io("creating", &path))
    };
    let swtpm_log = log("swtpm.log")?;
    let swtpm = Command::new("swtpm")
        .current_dir(dir)
        .args(["socket", "--tpm2", "--tpmstate", "dir=swtpm"])
        .args(["--ctrl", "type=unixio,path=swtpm.sock"])
        .args(["--flags", "not-need-init,startup-clear", "--terminate"])
        .stdin(Stdio::null())
        .stdout(swtpm_log.try_clone().map_err(io("opening", &dir.join("swtpm.log")))?)
        .stderr(swtpm_log)
        .process_group(0)
        .spawn()
        .map_err(|e| QemuError::Failed {
            what: format!("swtpm did not start ({e})"),
            log: String::new(),
        })?;
    children.push(swtpm);
    let swtpm_process = BoxProcess::of(&children[0]);
    write_record(
        dir,
        &Record {
            qemu: None,
            swtpm: swtpm_process,
            booted: None,
        },
    )?;
    wait_for_socket(
        &dir.join("swtpm.sock"),
        &mut children[0],
        &dir.join("swtpm.log"),
        "swtpm",
    )?;

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.current_dir(dir)
        .env("TMPDIR", dir.join("tmp"))
        .args(["-nodefaults", "-no-user-config"])
        .args(["-name", &format!("safebox-{}", machine.name.replace(',', ",,"))])
        .args(["-machine", "q35", "-accel", accelerator, "-cpu", cpu])
        .args(["-smp", &machine.cpu_count.to_string()])
        .args(["-m", &machine.memory_mib.to_string()])
        .args(["-display", "none", "-no-reboot"])
        .args([
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"))
        .args(["-drive", "if=pflash,format=raw,unit=1,file=vars.fd"])
        .args(["-chardev", "socket,id=tpm,path=swtpm.sock"])
        .args([
            "-tpmdev",
            "emulator,id=tpm0,chardev=tpm",
            "-device",
            "tpm-tis,tpmdev=tpm0",
        ])
        .arg("-drive")
        .arg(format!(
            "if=none,id=disk,format=raw,snapshot=on,file={}",
            escape(machine.disk)
        ))
        .args(["-device", "virtio-blk-pci,drive=disk,bootindex=0"])
        .arg("-netdev")
        .arg(format!("user,id=net0,restrict=on,{}", machine.forwards))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .arg("-fw_cfg")
        .arg(format!("name={FW_CFG_CONFIG},file=fw_cfg/config.json"))
        .arg("-fw_cfg")
        .arg(format!("name={FW_CFG_ATTESTATION},file=fw_cfg/attestation.pem"))
        .args(["-serial", "file:console.log"])
        .args(["-qmp", "unix:qmp.sock,server=on,wait=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log("qemu.log")?)
        .process_group(0);
    let at = Instant::now();
    let qemu = qemu.spawn().map_err(|e| QemuError::Failed {
        what: format!("qemu-system-x86_64 did not start ({e})"),
        log: String::new(),
    })?;
    children.push(qemu);
    let qemu_process = BoxProcess::of(&children[1]);
    write_record(
        dir,
        &Record {
            qemu: qemu_process,
            swtpm: swtpm_process,
            booted: None,
        },
    )?;
    let qemu_log = dir.join("qemu.log");
    wait_for_socket(&dir.join("qmp.sock"), &mut children[1], &qemu_log, "QEMU")?;
    let (forwarded, reported) = query_qemu(dir).map_err(|what| QemuError::Failed {
        what: format!("QEMU under {accelerator}: its monitor: {what}"),
        log: process::log_tail(&qemu_log),
    })?;
    std::thread::sleep(SETTLE.saturating_sub(at.elapsed()));
    if let Ok(Some(status)) = children[1].try_wait() {
        return Err(QemuError::Failed {
            what: format!("QEMU under {accelerator} (-cpu {cpu}) exited ({status}) as the guest started"),
            log: process::log_tail(&qemu_log),
        });
    }
    if let Some(stopped) = guest_stopped(dir) {
        return Err(QemuError::Failed {
            what: format!("under {accelerator} (-cpu {cpu}), {stopped} as it started"),
            log: process::log_tail(&qemu_log),
        });
    }
    let (Some(swtpm), Some(qemu)) = (swtpm_process, qemu_process) else {
        return Err(QemuError::Failed {
            what: "the box's processes could not be identified in /proc".into(),
            log: String::new(),
        });
    };
    Ok(Started {
        swtpm,
        qemu,
        forwarded,
        accelerator: reported,
        at,
    })
}

/// The box recorded in `dir`, if both its processes still run.
#[must_use]
pub fn find(dir: &Path) -> Option<QemuBox> {
    let record = read_record(dir)?;
    let booted = record.booted?;
    (booted.qemu.is_running() && booted.swtpm.is_running()).then_some(booted)
}

/// Stops the box recorded in `dir` (QEMU, then swtpm: SIGTERM to each process group, SIGKILL
/// after a grace period) and removes the folder. Stopping a stopped box is not an error; a
/// folder without this module's record (another kind of box's, or none) is left alone.
///
/// # Errors
/// [`QemuError::Io`] when the folder cannot be removed.
pub fn stop(dir: &Path) -> Result<(), QemuError> {
    let Some(record) = read_record(dir) else {
        return Ok(());
    };
    for process in [record.qemu, record.swtpm].into_iter().flatten() {
        if !process.is_running() {
            process::reap(process.pid);
            continue;
        }
        process::signal_group(process.pid, rustix::process::Signal::TERM);
        let asked = Instant::now();
        while process.is_running() {
            if asked.elapsed() > STOP_GRACE {
                process::signal_group(process.pid, rustix::process::Signal::KILL);
            }
            process::reap(process.pid);
            std::thread::sleep(Duration::from_millis(20));
        }
        process::reap(process.pid);
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", dir)(e)),
    }
}

fn write_record(dir: &Path, record: &Record) -> Result<(), QemuError> {
    let body = serde_json::to_vec_pretty(record).map_err(|e| QemuError::Setup(e.to_string()))?;
    crate::private::write_file(&dir.join(RECORD), &body).map_err(|e| QemuError::Setup(e.to_string()))
}

fn read_record(dir: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(dir.join(RECORD)).ok()?).ok()
}

/// A path to `name` in `dir` that fits a Unix socket address (108 bytes), however deep `dir`
/// is: through this process's open descriptor of the folder.
fn socket_path(dir: &File, name: &str) -> PathBuf {
    use std::os::fd::AsRawFd as _;
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Waits for `child` to create its socket `path`.
fn wait_for_socket(path: &Path, child: &mut Child, log: &Path, name: &str) -> Result<(), QemuError> {
    let started = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(QemuError::Failed {
                what: format!("{name} exited ({status}) before opening {}", path.display()),
                log: process::log_tail(log),
            });
        }
        if started.elapsed() > SOCKET_TIMEOUT {
            return Err(QemuError::Failed {
                what: format!(
                    "{name} did not open {} within {} s",
                    path.display(),
                    SOCKET_TIMEOUT.as_secs()
                ),
                log: process::log_tail(log),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A QMP session (QEMU's "QMP Reference Manual": a greeting, `qmp_capabilities`, then one JSON
/// command per line, answered by `{"return": ...}` or `{"error": ...}` among `{"event": ...}`
/// lines).
struct Qmp {
    writer: std::os::unix::net::UnixStream,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
enum QmpError {
    /// The socket could not be reached, set up or read.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The first line was not QMP's greeting.
    #[error("unexpected greeting {0:?}")]
    Greeting(String),
    /// QEMU closed the monitor mid-exchange.
    #[error("QEMU closed the monitor")]
    Closed,
    /// A line that is not JSON.
    #[error("{line:?}: {source}")]
    NotJson {
        /// The line.
        line: String,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// QEMU answered a command with an error.
    #[error("{command} failed: {error}")]
    Refused {
        /// The command sent.
        command: serde_json::Value,
        /// QEMU's `error` object.
        error: serde_json::Value,
    },
}

fn qmp_io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> QmpError {
    let action = action.into();
    move |source| QmpError::Io { action, source }
}

impl Qmp {
    fn connect(dir: &Path) -> Result<Self, QmpError> {
        let folder = File::open(dir).map_err(qmp_io(format!("opening {}", dir.display())))?;
        let stream = std::os::unix::net::UnixStream::connect(socket_path(&folder, "qmp.sock"))
            .map_err(qmp_io("connecting to qmp.sock"))?;
        stream
            .set_read_timeout(Some(SOCKET_TIMEOUT))
            .map_err(qmp_io("setting the read timeout"))?;
        let writer = stream.try_clone().map_err(qmp_io("cloning the socket"))?;
        let mut qmp = Self {
            writer,
            reader: BufReader::new(stream),
        };
        let mut line = String::new();
        qmp.reader
            .read_line(&mut line)
            .map_err(qmp_io("reading the greeting"))?;
        if !line.contains("\"QMP\"") {
            return Err(QmpError::Greeting(line));
        }
        qmp.call(&serde_json::json!({"execute": "qmp_capabilities"}))?;
        Ok(qmp)
    }

    fn call(&mut self, command: &serde_json::Value) -> Result<serde_json::Value, QmpError> {
        writeln!(self.writer, "{command}").map_err(qmp_io(format!("sending {command}")))?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).map_err(qmp_io("reading"))? == 0 {
                return Err(QmpError::Closed);
            }
            let answer: serde_json::Value =
                serde_json::from_str(&line).map_err(|source| QmpError::NotJson { line, source })?;
            if let Some(value) = answer.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = answer.get("error") {
                return Err(QmpError::Refused {
                    command: command.clone(),
                    error: error.clone(),
                });
            }
        }
    }

    /// The guest's run state (`query-status`): `running`, `internal-error`, `shutdown`, ...
    fn status(&mut self) -> Result<String, QmpError> {
        let status = self.call(&serde_json::json!({"execute": "query-status"}))?;
        Ok(status
            .get("status")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown")
            .to_owned())
    }
}

/// QEMU's host forwards (guest port, host port) and accelerator.
fn query_qemu(dir: &Path) -> Result<(Vec<(u16, u16)>, String), QmpError> {
    let mut qmp = Qmp::connect(dir)?;
    let usernet = qmp.call(&serde_json::json!({
        "execute": "human-monitor-command",
        "arguments": {"command-line": "info usernet"}
    }))?;
    let kvm = qmp.call(&serde_json::json!({"execute": "query-kvm"}))?;
    let accelerator = if kvm.get("enabled").and_then(serde_json::Value::as_bool) == Some(true) {
        "kvm"
    } else {
        "tcg"
    };
    Ok((
        parse_usernet(usernet.as_str().unwrap_or_default()),
        accelerator.to_owned(),
    ))
}

/// Whether the guest still runs; otherwise QEMU's word for what stopped it.
fn guest_stopped(dir: &Path) -> Option<String> {
    match Qmp::connect(dir).and_then(|mut qmp| qmp.status()) {
        Ok(status) if status == "running" => None,
        Ok(status) => Some(format!("QEMU stopped the guest ({status})")),
        // QEMU exiting is seen by its caller; a monitor that does not answer is not a verdict.
        Err(_) => None,
    }
}

/// The `TCP[HOST_FORWARD]` rows of `info usernet` (libslirp's connection table: protocol
/// and state, fd, source address and port, destination address and port, queues) as
/// (guest port, host port).
fn parse_usernet(text: &str) -> Vec<(u16, u16)> {
    text.lines()
        .filter(|line| line.trim_start().starts_with("TCP[HOST_FORWARD]"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let host = fields.get(3)?.parse().ok()?;
            let guest = fields.get(5)?.parse().ok()?;
            Some((guest, host))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forwards_are_read_from_info_usernet() {
        let text = "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   9       127.0.0.1 37951       10.0.2.15  8443     0     0\r\n  TCP[HOST_FORWARD]   8       127.0.0.1 39789       10.0.2.15    22     0     0\r\n  TCP[ESTABLISHED]   12       10.0.2.15 40000       10.0.2.2   80     0     0\r\n";
        assert_eq!(parse_usernet(text), vec![(8443, 37951), (22, 39789)]);
        assert!(parse_usernet("").is_empty());
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        assert_eq!(escape(Path::new("/a,b/disk.img")), "/a,,b/disk.img");
    }

    #[test]
    fn a_folder_in_use_is_refused_and_stopping_nothing_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        stop(&dir.path().join("never-launched")).unwrap();
        // Another kind of box's folder (no QEMU record) is not this module's to remove.
        let other = dir.path().join("eif-box");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("box.json"), b"{}").unwrap();
        stop(&other).unwrap();
        assert!(other.join("box.json").exists());
        std::fs::remove_dir_all(&other).unwrap();
        std::fs::write(dir.path().join("something"), b"x").unwrap();
        let nitro_dir = tempfile::tempdir().unwrap();
        let nitro = SimulatedNitro::open_or_create(nitro_dir.path()).unwrap();
        let spec = QemuBoxSpec {
            disk: Path::new("/nonexistent/disk.img"),
            dir: dir.path(),
            ssh: false,
            box_key: &"0".repeat(64),
            module_id: "m",
            attestation: &nitro,
            cpu_count: 1,
            memory_mib: 512,
            boot_timeout: Duration::from_secs(1),
        };
        let err = launch(&spec).unwrap_err();
        // Without QEMU installed the tools are named first; with it, the missing disk.
        assert!(
            matches!(err, QemuError::Missing { .. }) || err.to_string().contains("/nonexistent/disk.img"),
            "{err}"
        );
        let disk = dir.path().join("something");
        let err = launch(&QemuBoxSpec { disk: &disk, ..spec }).unwrap_err();
        assert!(
            matches!(err, QemuError::Missing { .. }) || err.to_string().contains("is not empty"),
            "{err}"
        );
        assert!(disk.exists(), "a refused launch leaves what was there");
    }
}
