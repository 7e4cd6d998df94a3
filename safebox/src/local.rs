//! The `local` backend: images and boxes under one `state_dir` on this machine.
//!
//! Layout: `<state_dir>/artifacts/<id>/` per published image, `<state_dir>/boxes/<id>/` per
//! running box, `<state_dir>/attestation/` for the software NSM that signs the boxes'
//! documents. Changes take the `state_dir`'s lock (see [`crate::store`]), so two Terraform runs
//! sharing a `state_dir` never interleave them.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::attest::chain::TrustRoot;
use crate::attest::simulated::SimulatedNitro;
use crate::cloud::{
    check_record_id, ArtifactKind, BoxInstance, BoxSpec, Boxes, Cloud, CloudError, ExpectedArtifacts, Images,
    PublishedImage, RecordKind, SimulatedAttestation, Tags,
};
use crate::image::build::ImageBuild;
use crate::image::spec::ImageFormat;
use crate::image::Variant;
use crate::process;
use crate::store::{io, locked, open_state_dir, write_atomically};

/// Published images live in `<state_dir>/artifacts/<id>/`.
const ARTIFACTS: &str = "artifacts";
const MANIFEST_FILE: &str = "manifest.json";
const SEAL_PROOF_FILE: &str = "seal-proof.json";
/// Running boxes live in `<state_dir>/boxes/<id>/`.
const BOXES: &str = "boxes";
/// The software NSM's hierarchy.
const SIMULATED_ROOT: &str = "attestation";
const BOX_FILE: &str = "box.json";
const ENDPOINT_FILE: &str = "endpoint";
/// The agent's in-box socket for the workload (link seal and open), in the box's folder.
pub const WORKLOAD_SOCKET: &str = "workload.sock";
/// How long a starting agent may take to announce its endpoint.
const AGENT_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// How long a stopping agent gets after SIGTERM before SIGKILL.
const AGENT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The embedded backend rooted at a `state_dir`.
#[derive(Debug, Clone)]
pub struct LocalCloud {
    root: PathBuf,
    agent: Vec<std::ffi::OsString>,
}

/// What a box's folder records about it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BoxRecord {
    pid: u32,
    /// When the process started (clock ticks since boot, /proc/PID/stat field 22): with the
    /// pid, what tells the box's agent from a later process that reused its pid.
    #[serde(default)]
    start_time: Option<u64>,
    instance_id: String,
    endpoint: String,
}

impl LocalCloud {
    /// Opens (creating if needed) the backend at `state_dir`.
    ///
    /// # Errors
    /// [`CloudError::Io`] when the folder cannot be created.
    ///
    /// The folder is known by its canonical path: `.safebox`, `./.safebox` and its absolute
    /// path are one `state_dir`, with the same boxes.
    pub fn open(state_dir: &Path) -> Result<Self, CloudError> {
        Ok(Self {
            root: open_state_dir(state_dir)?,
            agent: vec!["safebox-agent".into()],
        })
    }

    /// Sets the command that runs a box's agent (program, then leading arguments).
    #[must_use]
    pub fn with_agent_command(mut self, command: Vec<std::ffi::OsString>) -> Self {
        if !command.is_empty() {
            self.agent = command;
        }
        self
    }

    fn box_dir(&self, id: &str) -> Result<PathBuf, CloudError> {
        check_record_id(RecordKind::Enclave, id)?;
        Ok(self.root.join(BOXES).join(id))
    }

    /// The running agent recorded in `dir`, if its process is alive and is that agent: the
    /// same pid started at the same time (records written before start times were kept fall
    /// back to the agent's arguments naming this box's folder).
    fn running_box(dir: &Path) -> Option<BoxRecord> {
        let record: BoxRecord = serde_json::from_slice(&fs::read(dir.join(BOX_FILE)).ok()?).ok()?;
        let same = match record.start_time {
            Some(started) => process::start_time(record.pid) == Some(started),
            None => process::mentions(record.pid, &dir.join(ENDPOINT_FILE)),
        };
        (process::alive(record.pid) && same).then_some(record)
    }

    /// The `state_dir`.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn image_dir(&self, id: &str) -> Result<PathBuf, CloudError> {
        check_record_id(RecordKind::Image, id)?;
        Ok(self.root.join(ARTIFACTS).join(id))
    }

    /// Runs `f` while holding the `state_dir`'s write lock.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, CloudError>) -> Result<T, CloudError> {
        locked(&self.root, f)
    }

    /// Box `id`'s folder, created private (it holds the box's workload socket or signing key)
    /// while the lock is held, and the software root that attests the box (created on first
    /// use): a box stopping meanwhile sees the folder and leaves the root in place.
    fn open_box(&self, id: &str) -> Result<(PathBuf, SimulatedNitro), CloudError> {
        let dir = self.box_dir(id)?;
        let nitro = self.locked(|| {
            let nitro = SimulatedNitro::open_or_create(&self.root.join(SIMULATED_ROOT))
                .map_err(|e| launch_error(id, e.to_string()))?;
            crate::private::create_dir(&dir).map_err(|e| launch_error(id, e.to_string()))?;
            Ok(nitro)
        })?;
        Ok((dir, nitro))
    }

    /// Starts the agent of an EIF box: a process on this machine serving documents of the
    /// EIF's PCRs from the software NSM.
    fn run_agent(&self, id: &str, spec: &BoxSpec) -> Result<BoxInstance, CloudError> {
        let (dir, _) = self.open_box(id)?;
        let nsm_dir = self.root.join(SIMULATED_ROOT);
        let endpoint_file = dir.join(ENDPOINT_FILE);
        let _ = fs::remove_file(&endpoint_file);
        let log_path = dir.join("agent.log");
        let log = File::create(&log_path).map_err(io("creating", &log_path))?;
        let instance_id = format!("local-{id}");
        let mut command = std::process::Command::new(&self.agent[0]);
        command
            .args(&self.agent[1..])
            .args(["--listen", "127.0.0.1:0", "--endpoint-file"])
            .arg(&endpoint_file)
            .arg("--eif")
            .arg(&spec.artifact)
            .arg("--nsm-dir")
            .arg(&nsm_dir)
            .args(["--module-id", &format!("{instance_id}-enc")])
            .args(["--box-key", &spec.box_key])
            .arg("--workload-socket")
            .arg(dir.join(WORKLOAD_SOCKET))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io("opening", &log_path))?)
            .stderr(log);
        // Its own process group: Terraform's interrupts and exit do not reach the box.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .map_err(|e| launch_error(id, format!("cannot run {:?}: {e}", self.agent[0])))?;
        let started = std::time::Instant::now();
        let endpoint = loop {
            if let Ok(endpoint) = fs::read_to_string(&endpoint_file) {
                break endpoint.trim().to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(launch_error(
                    id,
                    format!("the agent exited ({status}): {}", process::log_tail(&log_path)),
                ));
            }
            if started.elapsed() > AGENT_START_TIMEOUT.min(spec.start_timeout) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(launch_error(
                    id,
                    format!(
                        "the agent did not start within {} s: {}",
                        AGENT_START_TIMEOUT.min(spec.start_timeout).as_secs(),
                        process::log_tail(&log_path)
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let record = BoxRecord {
            pid: child.id(),
            start_time: process::start_time(child.id()),
            instance_id: instance_id.clone(),
            endpoint: endpoint.clone(),
        };
        let recorded = serde_json::to_vec(&record)
            .map_err(|e| launch_error(id, e.to_string()))
            .and_then(|body| write_atomically(&dir.join(BOX_FILE), &body));
        if let Err(e) = recorded {
            // Unrecorded, the box could never be found or stopped again: stop it now.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(BoxInstance {
            instance_id,
            endpoint,
            ssh_endpoint: None,
        })
    }

    /// Boots the disk of a `"uki"` box under QEMU ([`crate::qemu`]), with a signing leaf of
    /// the software root handed to its agent.
    fn boot_disk(&self, id: &str, spec: &BoxSpec) -> Result<BoxInstance, CloudError> {
        let (dir, nitro) = self.open_box(id)?;
        let instance_id = format!("local-{id}");
        let booted = crate::qemu::launch(&crate::qemu::QemuBoxSpec {
            disk: Path::new(&spec.artifact),
            dir: &dir,
            ssh: spec.ssh,
            box_key: &spec.box_key,
            module_id: &format!("{instance_id}-tpm"),
            attestation: &nitro,
            cpu_count: spec.cpu_count,
            memory_mib: spec.memory_mib,
            boot_timeout: spec.start_timeout.min(crate::qemu::DEFAULT_BOOT_TIMEOUT),
        })
        .map_err(|e| launch_error(id, e.to_string()))?;
        Ok(BoxInstance {
            instance_id,
            endpoint: booted.endpoint,
            ssh_endpoint: booted.ssh_endpoint,
        })
    }
}

/// Why box `id` did not start.
fn launch_error(id: &str, reason: String) -> CloudError {
    CloudError::Launch {
        id: id.to_owned(),
        reason,
    }
}

/// Writes the bootable disk of a UKI build's `variant` into `dir` and returns its SHA-256,
/// read back from the file.
fn write_disk(dir: &Path, build: &ImageBuild, variant: Variant) -> Result<String, CloudError> {
    let path = dir.join(artifact_name(variant, ImageFormat::Uki));
    let mut file = File::create(&path).map_err(io("creating", &path))?;
    build.write_disk(variant, &mut file).map_err(io("writing", &path))?;
    file.sync_all().map_err(io("flushing", &path))?;
    File::open(&path)
        .and_then(crate::image::sha256_hex)
        .map_err(io("reading", &path))
}

/// Writes the EIF of `variant` into `dir` and returns its SHA-256, computed from the bytes
/// as they were written.
fn write_eif(dir: &Path, build: &ImageBuild, variant: Variant) -> Result<String, CloudError> {
    let path = dir.join(artifact_name(variant, ImageFormat::Eif));
    let file = File::create(&path).map_err(io("creating", &path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let digest = build
        .write_eif_hashed(variant, &mut out)
        .map_err(io("writing", &path))?;
    let file = out.into_inner().map_err(|e| io("writing", &path)(e.into_error()))?;
    file.sync_all().map_err(io("flushing", &path))?;
    Ok(digest)
}

/// The file a variant is published as: `dev.eif` / `prod.eif`, or a UKI build's bootable
/// disks `dev.img` / `prod.img`.
fn artifact_name(variant: Variant, format: ImageFormat) -> String {
    match format {
        ImageFormat::Eif => format!("{variant}.eif"),
        ImageFormat::Uki => format!("{variant}.img"),
    }
}

impl Cloud for LocalCloud {
    fn name(&self) -> &'static str {
        "local"
    }

    fn simulated(&self) -> Option<&dyn SimulatedAttestation> {
        Some(self)
    }
}

impl SimulatedAttestation for LocalCloud {
    fn trust_root(&self) -> Result<TrustRoot, CloudError> {
        let dir = self.root.join(SIMULATED_ROOT);
        let nitro = self.locked(|| {
            SimulatedNitro::open_or_create(&dir).map_err(|e| CloudError::Launch {
                id: "attestation".into(),
                reason: e.to_string(),
            })
        })?;
        nitro.trust_root().map_err(|reason| CloudError::Launch {
            id: "attestation".into(),
            reason: reason.to_string(),
        })
    }
}

#[async_trait]
impl Images for LocalCloud {
    fn artifact_kind(&self) -> ArtifactKind {
        ArtifactKind::File
    }

    /// The local backend creates no cloud objects to tag: `_tags` stay in the resource's state.
    async fn publish_image(&self, id: &str, build: &ImageBuild, _tags: &Tags) -> Result<PublishedImage, CloudError> {
        let final_dir = self.image_dir(id)?;
        let parent = self.root.join(ARTIFACTS);
        fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
        let staging = parent.join(format!(".tmp-{id}-{:016x}", rand::random::<u64>()));
        fs::create_dir(&staging).map_err(io("creating", &staging))?;
        let format = build.format();
        let staged = (|| {
            for variant in [Variant::Dev, Variant::Prod] {
                let m = build.measurements(variant);
                // What is published is what the plan measured, byte for byte.
                let (expected, actual) = match format {
                    ImageFormat::Eif => (m.image_sha256.clone(), write_eif(&staging, build, variant)?),
                    ImageFormat::Uki => (
                        m.disk_sha256.clone().unwrap_or_default(),
                        write_disk(&staging, build, variant)?,
                    ),
                };
                if actual != expected {
                    return Err(CloudError::Digest {
                        artifact: artifact_name(variant, format),
                        expected,
                        actual,
                    });
                }
            }
            for (name, text) in [(MANIFEST_FILE, build.manifest()), (SEAL_PROOF_FILE, build.seal_proof())] {
                write_atomically(&staging.join(name), text.as_bytes())?;
            }
            self.locked(|| {
                if final_dir.exists() {
                    fs::remove_dir_all(&final_dir).map_err(io("replacing", &final_dir))?;
                }
                fs::rename(&staging, &final_dir).map_err(io("renaming into place", &final_dir))
            })
        })();
        if let Err(e) = staged {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        let path = |variant| final_dir.join(artifact_name(variant, format)).display().to_string();
        Ok(PublishedImage {
            dev_artifact: path(Variant::Dev),
            prod_artifact: path(Variant::Prod),
            snapshot_linear_sha256: None,
        })
    }

    async fn check_image(&self, id: &str, expected: &ExpectedArtifacts) -> Result<Vec<String>, CloudError> {
        let dir = self.image_dir(id)?;
        let mut problems = Vec::new();
        // The artifacts as published: EIFs, or a UKI build's bootable disks.
        let (format, dev, prod) = match &expected.disk_sha256 {
            Some((dev, prod)) => (ImageFormat::Uki, dev, prod),
            None => (ImageFormat::Eif, &expected.dev_sha256, &expected.prod_sha256),
        };
        for (name, want) in [
            (artifact_name(Variant::Dev, format), dev),
            (artifact_name(Variant::Prod, format), prod),
            (MANIFEST_FILE.to_owned(), &expected.manifest_sha256),
            (SEAL_PROOF_FILE.to_owned(), &expected.seal_proof_sha256),
        ] {
            let path = dir.join(&name);
            match File::open(&path).and_then(crate::image::sha256_hex) {
                Ok(actual) if &actual == want => {}
                Ok(actual) => problems.push(format!(
                    "{} changed: its SHA-256 is {actual}, expected {want}",
                    path.display()
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    problems.push(format!("{} is missing", path.display()))
                }
                Err(e) => return Err(io("reading", &path)(e)),
            }
        }
        Ok(problems)
    }

    async fn delete_image(&self, id: &str) -> Result<(), CloudError> {
        let dir = self.image_dir(id)?;
        self.locked(|| {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &dir)(e)),
            }
            let _ = fs::remove_dir(self.root.join(ARTIFACTS));
            Ok(())
        })
    }
}

#[async_trait]
impl Boxes for LocalCloud {
    fn places_boxes(&self) -> bool {
        false
    }

    fn boots(&self, _format: ImageFormat) -> bool {
        // EIFs run under a software NSM, disks under QEMU.
        true
    }

    async fn launch_box(&self, id: &str, spec: &BoxSpec) -> Result<BoxInstance, CloudError> {
        match spec.format {
            ImageFormat::Eif => self.run_agent(id, spec),
            ImageFormat::Uki => self.boot_disk(id, spec),
        }
    }

    async fn find_box(&self, id: &str) -> Result<Option<BoxInstance>, CloudError> {
        let dir = self.box_dir(id)?;
        if let Some(booted) = crate::qemu::find(&dir) {
            return Ok(Some(BoxInstance {
                instance_id: format!("local-{id}"),
                endpoint: booted.endpoint,
                ssh_endpoint: booted.ssh_endpoint,
            }));
        }
        Ok(Self::running_box(&dir).map(|r| BoxInstance {
            instance_id: r.instance_id,
            endpoint: r.endpoint,
            ssh_endpoint: None,
        }))
    }

    async fn terminate_box(&self, id: &str) -> Result<(), CloudError> {
        let dir = self.box_dir(id)?;
        // A booted disk's QEMU and swtpm (nothing, for an EIF box's folder). Stopping fails
        // only at removing the folder, which is removed again below and reported there.
        let _ = crate::qemu::stop(&dir);
        if let Some(record) = Self::running_box(&dir) {
            process::signal(record.pid, rustix::process::Signal::TERM);
            let started = std::time::Instant::now();
            while process::alive(record.pid) {
                if started.elapsed() > AGENT_STOP_GRACE {
                    process::signal(record.pid, rustix::process::Signal::KILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        self.locked(|| {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &dir)(e)),
            }
            // With the last box gone, its simulated root goes too: nothing is left behind.
            if fs::remove_dir(self.root.join(BOXES)).is_ok() {
                let _ = fs::remove_dir_all(self.root.join(SIMULATED_ROOT));
            }
            Ok(())
        })
    }
}
