//! The `local` backend: everything under one `state_dir` on this machine.
//!
//! Layout: `<state_dir>/<kind>/<id>.json` per record and `<state_dir>/.lock`, which every
//! writer holds exclusively so that two Terraform runs sharing a `state_dir` serialise their
//! writes. Each write goes to a temporary file in the same folder, is flushed to disk and then
//! renamed over the record, so a crash leaves the old or the new record, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::attest::chain::TrustRoot;
use crate::attest::simulated::SimulatedNitro;
use crate::cloud::{
    check_record_id, BoxInstance, BoxSpec, Cloud, CloudError, ExpectedArtifacts, PublishedImage, RecordKind, SealedKey,
};
use crate::govern::audit::{self, AuditEntry, AuditHead};
use crate::govern::keys::PublicKey;
use crate::image::build::ImageBuild;
use crate::image::spec::ImageFormat;
use crate::image::Variant;

const LOCK_FILE: &str = ".lock";
/// Published images live in `<state_dir>/artifacts/<id>/`.
const ARTIFACTS: &str = "artifacts";
const MANIFEST_FILE: &str = "manifest.json";
const SEAL_PROOF_FILE: &str = "seal-proof.json";
/// Running boxes live in `<state_dir>/boxes/<id>/`.
const BOXES: &str = "boxes";
/// The audit log of enforced governed changes. Destroy never removes it: history is kept.
pub const AUDIT_LOG: &str = "audit.log";
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
        fs::create_dir_all(state_dir).map_err(io("creating state_dir", state_dir))?;
        let root = fs::canonicalize(state_dir).map_err(io("resolving state_dir", state_dir))?;
        Ok(Self {
            root,
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
            Some(started) => process_start_time(record.pid) == Some(started),
            None => process_mentions(record.pid, &dir.join(ENDPOINT_FILE)),
        };
        (process_alive(record.pid) && same).then_some(record)
    }

    /// The `state_dir`.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record_path(&self, kind: RecordKind, id: &str) -> Result<PathBuf, CloudError> {
        check_record_id(kind, id)?;
        Ok(self.root.join(kind.as_str()).join(format!("{id}.json")))
    }

    fn image_dir(&self, id: &str) -> Result<PathBuf, CloudError> {
        check_record_id(RecordKind::Image, id)?;
        Ok(self.root.join(ARTIFACTS).join(id))
    }

    /// Runs `f` while holding the `state_dir`'s write lock.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, CloudError>) -> Result<T, CloudError> {
        let path = self.root.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("opening the lock file", &path))?;
        lock.lock().map_err(io("locking", &path))?;
        let result = f();
        // Dropping the file would release the lock as well; unlocking marks where it ends.
        let _ = lock.unlock();
        result
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CloudError {
    let path = path.to_path_buf();
    move |source| CloudError::Io { action, path, source }
}

/// Writes `body` to `path` so that readers see the old or the new content, never a mix.
fn write_atomically(path: &Path, body: &[u8]) -> Result<(), CloudError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut temp = tempfile_in(dir)?;
    temp.1.write_all(body).map_err(io("writing", &temp.0))?;
    temp.1.sync_all().map_err(io("flushing", &temp.0))?;
    fs::rename(&temp.0, path).map_err(io("renaming into place", path))?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("flushing", dir))?;
    Ok(())
}

/// Whether `pid` runs and is not a zombie.
fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, so start time (field 22) is the 20th after the closing parenthesis.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` was started with `path` among its arguments (so a reused pid is
/// never mistaken for the box's agent).
fn process_mentions(pid: u32, path: &Path) -> bool {
    let needle = path.as_os_str().as_encoded_bytes();
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == needle))
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The last lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Writes the bootable disk of a UKI build's `variant` into `dir` and returns its SHA-256,
/// read back from the file.
fn write_disk(dir: &Path, build: &ImageBuild, variant: Variant) -> Result<String, CloudError> {
    let path = dir.join(artifact_name(variant, ImageFormat::Uki));
    let mut file = File::create(&path).map_err(io("creating", &path))?;
    build.write_disk(variant, &mut file).map_err(io("writing", &path))?;
    file.sync_all().map_err(io("flushing", &path))?;
    sha256_of_file(&path).map_err(io("reading", &path))
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

fn sealed_keys_need_kms(id: &str) -> CloudError {
    CloudError::Unsupported {
        backend: "local",
        what: format!("hold the sealed key {id:?}: keys released on attestation need AWS KMS"),
        fix: "use backend = \"aws\" for safebox_sealed_key",
    }
}

fn regions_need_aws(what: String) -> CloudError {
    CloudError::Unsupported {
        backend: "local",
        what,
        fix: "remove copy_to_regions, or use backend = \"aws\"",
    }
}

/// The file a variant is published as: `dev.eif` / `prod.eif`, or a UKI build's bootable
/// disks `dev.img` / `prod.img`.
fn artifact_name(variant: Variant, format: ImageFormat) -> String {
    match format {
        ImageFormat::Eif => format!("{variant}.eif"),
        ImageFormat::Uki => format!("{variant}.img"),
    }
}

fn sha256_of_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn tempfile_in(dir: &Path) -> Result<(PathBuf, File), CloudError> {
    let path = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("creating", &path))?;
    Ok((path, file))
}

#[async_trait]
impl Cloud for LocalCloud {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn get_record(&self, kind: RecordKind, id: &str) -> Result<Option<Vec<u8>>, CloudError> {
        let path = self.record_path(kind, id)?;
        match fs::read(&path) {
            Ok(body) => Ok(Some(body)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    async fn put_record(&self, kind: RecordKind, id: &str, body: &[u8]) -> Result<(), CloudError> {
        let path = self.record_path(kind, id)?;
        self.locked(|| write_atomically(&path, body))
    }

    async fn delete_record(&self, kind: RecordKind, id: &str) -> Result<(), CloudError> {
        let path = self.record_path(kind, id)?;
        self.locked(|| {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &path)(e)),
            }
            // An emptied kind folder goes too, so destroy leaves nothing behind. Failing to
            // remove it (another record arrived) is fine.
            if let Some(dir) = path.parent() {
                let _ = fs::remove_dir(dir);
            }
            Ok(())
        })
    }

    async fn kms_public_key(&self, key_id: &str) -> Result<PublicKey, CloudError> {
        Err(CloudError::Unsupported {
            backend: "local",
            what: format!("read the KMS key {key_id:?}"),
            fix: "give the signer's public_key_pem instead, or use backend = \"aws\"",
        })
    }

    async fn share_image(&self, id: &str, account_ids: &[String]) -> Result<(), CloudError> {
        if account_ids.is_empty() {
            return Ok(());
        }
        Err(CloudError::Unsupported {
            backend: "local",
            what: format!("share the image {id:?} with other accounts"),
            fix: "remove launch_permission_account_ids, or use backend = \"aws\"",
        })
    }

    async fn copy_image(&self, id: &str, region: &str) -> Result<PublishedImage, CloudError> {
        Err(regions_need_aws(format!("copy the image {id:?} to {region}")))
    }

    async fn in_region(&self, region: &str) -> Result<Box<dyn Cloud>, CloudError> {
        Err(regions_need_aws(format!("work in the region {region}")))
    }

    async fn create_sealed_key(&self, id: &str, _: &str, _: &str) -> Result<SealedKey, CloudError> {
        Err(sealed_keys_need_kms(id))
    }

    async fn sealed_key_policy(&self, key_id: &str) -> Result<Option<String>, CloudError> {
        Err(sealed_keys_need_kms(key_id))
    }

    async fn delete_sealed_key(&self, key_id: &str) -> Result<(), CloudError> {
        Err(sealed_keys_need_kms(key_id))
    }

    /// Builds are cached outside the `state_dir` (which holds only what exists), in the
    /// system's temporary folder under a folder of this user's own
    /// (`safebox-<uid>/build-<state_dir key>`, both mode 0700 and checked so), one cache per
    /// `state_dir` so that workspaces never share a build another may discard. An abandoned
    /// plan leaves its build there, not here.
    fn build_cache_dir(&self) -> PathBuf {
        let key = hex::encode(&Sha256::digest(self.root.as_os_str().as_encoded_bytes())[..8]);
        let uid = rustix::process::getuid().as_raw();
        std::env::temp_dir()
            .join(format!("safebox-{uid}"))
            .join(format!("build-{key}"))
    }

    async fn publish_image(&self, id: &str, build: &ImageBuild) -> Result<PublishedImage, CloudError> {
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
            match sha256_of_file(&path) {
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

    async fn launch_box(&self, id: &str, spec: &BoxSpec) -> Result<BoxInstance, CloudError> {
        let dir = self.box_dir(id)?;
        let launch_error = |reason: String| CloudError::Launch {
            id: id.to_owned(),
            reason,
        };
        let nsm_dir = self.root.join(SIMULATED_ROOT);
        self.locked(|| {
            SimulatedNitro::open_or_create(&nsm_dir).map_err(|e| launch_error(e.to_string()))?;
            // The box's folder holds its workload socket: only this user may reach it.
            crate::private::create_dir(&dir).map_err(|e| launch_error(e.to_string()))
        })?;
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
            .map_err(|e| launch_error(format!("cannot run {:?}: {e}", self.agent[0])))?;
        let started = std::time::Instant::now();
        let endpoint = loop {
            if let Ok(endpoint) = fs::read_to_string(&endpoint_file) {
                break endpoint.trim().to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(launch_error(format!(
                    "the agent exited ({status}): {}",
                    log_tail(&log_path)
                )));
            }
            if started.elapsed() > AGENT_START_TIMEOUT.min(spec.start_timeout) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(launch_error(format!(
                    "the agent did not start within {} s: {}",
                    AGENT_START_TIMEOUT.min(spec.start_timeout).as_secs(),
                    log_tail(&log_path)
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let record = BoxRecord {
            pid: child.id(),
            start_time: process_start_time(child.id()),
            instance_id: instance_id.clone(),
            endpoint: endpoint.clone(),
        };
        let recorded = serde_json::to_vec(&record)
            .map_err(|e| launch_error(e.to_string()))
            .and_then(|body| write_atomically(&dir.join(BOX_FILE), &body));
        if let Err(e) = recorded {
            // Unrecorded, the box could never be found or stopped again: stop it now.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(BoxInstance { instance_id, endpoint })
    }

    async fn find_box(&self, id: &str) -> Result<Option<BoxInstance>, CloudError> {
        let dir = self.box_dir(id)?;
        Ok(Self::running_box(&dir).map(|r| BoxInstance {
            instance_id: r.instance_id,
            endpoint: r.endpoint,
        }))
    }

    async fn terminate_box(&self, id: &str) -> Result<(), CloudError> {
        let dir = self.box_dir(id)?;
        if let Some(record) = Self::running_box(&dir) {
            signal(record.pid, rustix::process::Signal::TERM);
            let started = std::time::Instant::now();
            while process_alive(record.pid) {
                if started.elapsed() > AGENT_STOP_GRACE {
                    signal(record.pid, rustix::process::Signal::KILL);
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

    async fn read_audit(&self) -> Result<String, CloudError> {
        let path = self.root.join(AUDIT_LOG);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    async fn append_audit(&self, entry: AuditEntry, floor: Option<&AuditHead>) -> Result<AuditHead, CloudError> {
        let path = self.root.join(AUDIT_LOG);
        self.locked(|| {
            audit::append(&path, entry, floor).map_err(|source| CloudError::Audit {
                location: path.display().to_string(),
                source,
            })
        })
    }

    fn simulated_trust_root(&self) -> Result<Option<TrustRoot>, CloudError> {
        let dir = self.root.join(SIMULATED_ROOT);
        let nitro = self.locked(|| {
            SimulatedNitro::open_or_create(&dir).map_err(|e| CloudError::Launch {
                id: "attestation".into(),
                reason: e.to_string(),
            })
        })?;
        nitro.trust_root().map(Some).map_err(|reason| CloudError::Launch {
            id: "attestation".into(),
            reason,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The local backend never awaits anything, so polling once completes it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("local backend future did not complete"),
        }
    }

    #[test]
    fn records_round_trip_and_leave_nothing_when_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = LocalCloud::open(&dir.path().join("state")).unwrap();
        assert_eq!(block_on(cloud.get_record(RecordKind::Policy, "pol-1")).unwrap(), None);
        block_on(cloud.put_record(RecordKind::Policy, "pol-1", b"one")).unwrap();
        block_on(cloud.put_record(RecordKind::Policy, "pol-1", b"two")).unwrap();
        assert_eq!(
            block_on(cloud.get_record(RecordKind::Policy, "pol-1"))
                .unwrap()
                .as_deref(),
            Some(&b"two"[..])
        );
        block_on(cloud.delete_record(RecordKind::Policy, "pol-1")).unwrap();
        block_on(cloud.delete_record(RecordKind::Policy, "pol-1")).unwrap();
        let left: Vec<_> = fs::read_dir(cloud.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [LOCK_FILE]);
    }

    #[test]
    fn refuses_ids_that_would_escape_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = LocalCloud::open(dir.path()).unwrap();
        let err = block_on(cloud.put_record(RecordKind::Policy, "../escape", b"x")).unwrap_err();
        assert!(matches!(err, CloudError::InvalidId { .. }), "{err}");
        assert!(!dir.path().join("escape.json").exists());
    }

    #[test]
    fn concurrent_writers_never_tear_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let writers: Vec<_> = (0..4u8)
            .map(|n| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let cloud = LocalCloud::open(&root).unwrap();
                    for _ in 0..50 {
                        block_on(cloud.put_record(RecordKind::Policy, "shared", &[n; 4096])).unwrap();
                    }
                })
            })
            .collect();
        let cloud = LocalCloud::open(&root).unwrap();
        for _ in 0..200 {
            if let Some(body) = block_on(cloud.get_record(RecordKind::Policy, "shared")).unwrap() {
                assert_eq!(body.len(), 4096);
                assert!(body.iter().all(|b| *b == body[0]));
            }
        }
        for w in writers {
            w.join().unwrap();
        }
    }
}
