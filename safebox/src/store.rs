//! Where Safebox keeps its memory: records, approvals, the audit log, and the lease that
//! orders writers.
//!
//! A [`Store`] is separate from the backend that runs images and boxes: records (what Terraform
//! created, for refresh, import and governance), the approvals auditors sign and the
//! hash-chained audit log must outlive any one machine when a team shares them, while
//! artifacts and boxes live wherever the backend puts them. Two stores:
//!
//! - [`FolderStore`] keeps everything in the provider's `state_dir`:
//!   `<state_dir>/<kind>/<id>.json` per record, `<state_dir>/approvals/<change_digest>/<signer>.json`,
//!   `<state_dir>/audit.log`, `<state_dir>/lease.json`, and `<state_dir>/.lock`, which every
//!   writer holds while it compares and writes. Each write goes to a temporary file in the same
//!   folder, is flushed to disk and then renamed over the file, so a crash leaves the old or
//!   the new file, never a torn one.
//! - [`objects::ObjectStore`] keeps them as objects in a bucket, one object per audit entry,
//!   written once (the `aws` crate puts it on S3 with Object Lock).
//!
//! Both write records on a condition: a new record only if none exists, a changed one only if
//! it is still the version this run read ([`Store::put_record`]), so two runs never overwrite
//! each other's record. Both keep the apply lease the same way ([`lease`]).

pub mod lease;
pub mod objects;

mod files;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use self::files::Files;
use self::lease::{LeaseAttempt, LeaseBody, LeaseToken, Liveness};
use self::objects::{ObjectStore, Version};
use crate::cloud::{CloudError, RecordKind};
use crate::govern::approval::{Approval, ApprovalsFolder};
use crate::govern::audit::{self, AuditEntry, AuditHead};

/// The lock file every writer of a `state_dir` holds.
pub(crate) const LOCK_FILE: &str = ".lock";
/// The audit log of enforced governed changes. Destroy never removes it: history is kept.
pub const AUDIT_LOG: &str = "audit.log";
/// The apply lease's key in every store.
pub const LEASE_KEY: &str = "lease.json";

/// A record as read, with the version a later write of it is conditional on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record.
    pub body: Vec<u8>,
    /// Its version.
    pub version: Version,
}

/// Records, approvals, the audit log and the apply lease.
#[async_trait]
pub trait Store: Send + Sync {
    /// Where the store is, for messages and the plan report (a folder, or `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Reads the record `kind`/`id`; `None` when there is none.
    async fn get_record(&self, kind: RecordKind, id: &str) -> Result<Option<StoredRecord>, CloudError>;

    /// Writes the record `kind`/`id` atomically (readers see the old or the new body, never a
    /// mix): a new record when `expected` is `None`, which fails if one exists; otherwise only
    /// if the record is still at `expected`. Returns the new version.
    ///
    /// # Errors
    /// [`CloudError::RecordChanged`] when another run created or changed the record first;
    /// nothing was written then.
    async fn put_record(
        &self,
        kind: RecordKind,
        id: &str,
        body: &[u8],
        expected: Option<&Version>,
    ) -> Result<Version, CloudError>;

    /// Removes the record `kind`/`id`; removing a missing record is not an error.
    async fn delete_record(&self, kind: RecordKind, id: &str) -> Result<(), CloudError>;

    /// The audit log, as written (one canonical JSON entry per line); empty when nothing was
    /// logged yet.
    async fn read_audit(&self) -> Result<String, CloudError>;

    /// Appends an entry to the audit log (filling in its sequence and chain) and returns the
    /// log's new head, unless the log's chain is broken or it no longer holds `floor` (the
    /// latest head the caller saw): a rolled-back log is never extended.
    async fn append_audit(&self, entry: AuditEntry, floor: Option<&AuditHead>) -> Result<AuditHead, CloudError>;

    /// The approvals stored for the change `digest` (`approvals/<digest>/*.json`).
    async fn read_approvals(&self, digest: &str) -> Result<ApprovalsFolder, CloudError>;

    /// Stores `approval` at `approvals/<digest>/<signer>.json`; returns where it went.
    async fn put_approval(&self, approval: &Approval) -> Result<String, CloudError>;

    /// Takes, renews or takes over the apply lease for `mine.run` ([`lease::attempt`]); never
    /// waits.
    async fn try_lease(&self, mine: &LeaseBody, now: time::OffsetDateTime) -> Result<LeaseAttempt, CloudError>;

    /// Releases the lease `token` holds.
    async fn release_lease(&self, token: &LeaseToken) -> Result<(), CloudError>;

    /// Checks that what is written cannot be rewritten or removed for `min_retention_days`
    /// (a bucket's versioning and Object Lock). A folder promises nothing of the kind and
    /// passes: whoever may write `state_dir` may rewrite it.
    async fn check_protection(&self, min_retention_days: i64) -> Result<(), CloudError>;
}

/// Where a store is, as the CLI is told: `s3://bucket/prefix`, or a folder (a `state_dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAddress {
    /// A bucket and prefix.
    Bucket(BucketLocation),
    /// A folder.
    Folder(PathBuf),
}

impl std::str::FromStr for StoreAddress {
    type Err = BadLocation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("s3://") {
            s.parse().map(Self::Bucket)
        } else {
            Ok(Self::Folder(PathBuf::from(s)))
        }
    }
}

/// A bucket and a prefix in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketLocation {
    /// The bucket.
    pub bucket: String,
    /// The prefix every key starts with: empty, or ending in `/`.
    pub prefix: String,
}

/// A location that is not `s3://BUCKET/PREFIX`, or a bucket name S3 does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a store location: {reason}")]
pub struct BadLocation {
    /// What was given.
    pub given: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl BucketLocation {
    /// A location in `bucket` under `prefix`; a prefix that does not end in `/` gets one, so
    /// that `prod` and `prod/` are one store.
    ///
    /// # Errors
    /// [`BadLocation`] for a bucket name S3 does not allow, or a prefix starting with `/`.
    pub fn new(bucket: &str, prefix: &str) -> Result<Self, BadLocation> {
        let bad = |reason| BadLocation {
            given: format!("s3://{bucket}/{prefix}"),
            reason,
        };
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_bucket {
            return Err(bad("bucket names are 3 to 63 lower-case letters, digits, '.' and '-'"));
        }
        if prefix.starts_with('/') || prefix.split('/').any(|part| part == "..") {
            return Err(bad("the prefix must not start with '/' or contain '..'"));
        }
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix,
        })
    }
}

impl std::str::FromStr for BucketLocation {
    type Err = BadLocation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("s3://").ok_or(BadLocation {
            given: s.to_owned(),
            reason: "it does not start with s3://",
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Self::new(bucket, prefix)
    }
}

impl std::fmt::Display for BucketLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Checks that `digest` is a change digest (`sha256:` and 64 lower-case hex digits), so that
/// it can name a folder or a prefix.
///
/// # Errors
/// [`CloudError::InvalidKey`] otherwise.
pub fn check_change_digest(digest: &str) -> Result<(), CloudError> {
    let valid = digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if valid {
        Ok(())
    } else {
        Err(CloudError::InvalidKey {
            what: "change digest",
            value: digest.to_owned(),
            rule: "sha256: and 64 lower-case hex digits, as the plan shows change_digest",
        })
    }
}

/// Checks that `value` (a signer id) can name an object or a file.
pub(crate) fn check_key_part(what: &'static str, value: &str) -> Result<(), CloudError> {
    if crate::cloud::is_plain_name(value, b"@") {
        Ok(())
    } else {
        Err(CloudError::InvalidKey {
            what,
            value: value.to_owned(),
            rule: "1 to 128 letters, digits, '.', '_', '-' and '@', not starting with '.'",
        })
    }
}

/// The embedded store: a `state_dir` on this machine. Records, approvals and the lease are
/// the bucket store's over the folder's files (records at the top, leases also judged by
/// whether their holder's processes are alive here); the audit log is one file.
pub struct FolderStore {
    files: ObjectStore<Files>,
    root: PathBuf,
}

impl std::fmt::Debug for FolderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl FolderStore {
    /// Opens (creating if needed) the store at `state_dir`, known by its canonical path so that
    /// `.safebox`, `./.safebox` and its absolute path are one store.
    ///
    /// # Errors
    /// [`CloudError::Io`] when the folder cannot be created or resolved.
    pub fn open(state_dir: &Path) -> Result<Self, CloudError> {
        let root = open_state_dir(state_dir)?;
        Ok(Self {
            files: ObjectStore::with_layout(Files::new(root.clone()), "", Liveness::ThisHost),
            root,
        })
    }

    /// The `state_dir`.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl Store for FolderStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn get_record(&self, kind: RecordKind, id: &str) -> Result<Option<StoredRecord>, CloudError> {
        self.files.get_record(kind, id).await
    }

    async fn put_record(
        &self,
        kind: RecordKind,
        id: &str,
        body: &[u8],
        expected: Option<&Version>,
    ) -> Result<Version, CloudError> {
        self.files.put_record(kind, id, body, expected).await
    }

    async fn delete_record(&self, kind: RecordKind, id: &str) -> Result<(), CloudError> {
        self.files.delete_record(kind, id).await
    }

    async fn read_audit(&self) -> Result<String, CloudError> {
        let path = self.root.join(AUDIT_LOG);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    async fn append_audit(&self, entry: AuditEntry, floor: Option<&AuditHead>) -> Result<AuditHead, CloudError> {
        let path = self.root.join(AUDIT_LOG);
        locked(&self.root, || {
            audit::append(&path, entry, floor).map_err(|source| CloudError::Audit {
                location: path.display().to_string(),
                source,
            })
        })
    }

    async fn read_approvals(&self, digest: &str) -> Result<ApprovalsFolder, CloudError> {
        self.files.read_approvals(digest).await
    }

    async fn put_approval(&self, approval: &Approval) -> Result<String, CloudError> {
        self.files.put_approval(approval).await
    }

    async fn try_lease(&self, mine: &LeaseBody, now: time::OffsetDateTime) -> Result<LeaseAttempt, CloudError> {
        self.files.try_lease(mine, now).await
    }

    async fn release_lease(&self, token: &LeaseToken) -> Result<(), CloudError> {
        self.files.release_lease(token).await
    }

    async fn check_protection(&self, _: i64) -> Result<(), CloudError> {
        Ok(())
    }
}

/// Creates `state_dir` if needed and returns its canonical path.
pub(crate) fn open_state_dir(state_dir: &Path) -> Result<PathBuf, CloudError> {
    fs::create_dir_all(state_dir).map_err(io("creating state_dir", state_dir))?;
    fs::canonicalize(state_dir).map_err(io("resolving state_dir", state_dir))
}

/// Runs `f` while holding the write lock of the `state_dir` at `root`.
pub(crate) fn locked<T>(root: &Path, f: impl FnOnce() -> Result<T, CloudError>) -> Result<T, CloudError> {
    let path = root.join(LOCK_FILE);
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

/// A [`CloudError::Io`] for `action` on `path`.
pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CloudError {
    let path = path.to_path_buf();
    move |source| CloudError::Io { action, path, source }
}

/// Writes `body` to `path` so that readers see the old or the new content, never a mix.
pub(crate) fn write_atomically(path: &Path, body: &[u8]) -> Result<(), CloudError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let (temp, mut file) = tempfile_in(dir)?;
    file.write_all(body).map_err(io("writing", &temp))?;
    file.sync_all().map_err(io("flushing", &temp))?;
    fs::rename(&temp, path).map_err(io("renaming into place", path))?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("flushing", dir))?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The folder store never awaits anything, so polling once completes it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("folder store future did not complete"),
        }
    }

    fn body(store: &FolderStore, id: &str) -> Option<Vec<u8>> {
        block_on(store.get_record(RecordKind::Policy, id))
            .unwrap()
            .map(|r| r.body)
    }

    #[test]
    fn records_round_trip_and_leave_nothing_when_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(&dir.path().join("state")).unwrap();
        assert_eq!(body(&store, "pol-1"), None);
        let one = block_on(store.put_record(RecordKind::Policy, "pol-1", b"one", None)).unwrap();
        let two = block_on(store.put_record(RecordKind::Policy, "pol-1", b"two", Some(&one))).unwrap();
        assert_eq!(body(&store, "pol-1").as_deref(), Some(&b"two"[..]));
        assert_eq!(
            block_on(store.get_record(RecordKind::Policy, "pol-1"))
                .unwrap()
                .unwrap()
                .version,
            two
        );
        block_on(store.delete_record(RecordKind::Policy, "pol-1")).unwrap();
        block_on(store.delete_record(RecordKind::Policy, "pol-1")).unwrap();
        let left: Vec<_> = fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [LOCK_FILE]);
    }

    #[test]
    fn a_record_is_created_once_and_replaced_only_from_the_version_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let first = block_on(store.put_record(RecordKind::Policy, "pol-1", b"one", None)).unwrap();
        // Another run creating the same record, or replacing it from a version it no longer
        // is, overwrites nothing and is told so.
        let err = block_on(store.put_record(RecordKind::Policy, "pol-1", b"other", None)).unwrap_err();
        assert!(matches!(err, CloudError::RecordChanged { how: "created", .. }), "{err}");
        assert!(err.to_string().contains("Run terraform plan again"), "{err}");
        block_on(store.put_record(RecordKind::Policy, "pol-1", b"two", Some(&first))).unwrap();
        let err = block_on(store.put_record(RecordKind::Policy, "pol-1", b"three", Some(&first))).unwrap_err();
        assert!(matches!(err, CloudError::RecordChanged { how: "changed", .. }), "{err}");
        assert_eq!(body(&store, "pol-1").as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn refuses_ids_that_would_escape_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let err = block_on(store.put_record(RecordKind::Policy, "../escape", b"x", None)).unwrap_err();
        assert!(matches!(err, CloudError::InvalidId { .. }), "{err}");
        assert!(!dir.path().join("escape.json").exists());
        let approval = Approval {
            signer: "../../x".into(),
            action: "image.publish".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            signature: String::new(),
        };
        let err = block_on(store.put_approval(&approval)).unwrap_err();
        assert!(matches!(err, CloudError::InvalidKey { what: "signer", .. }), "{err}");
        let err = block_on(store.read_approvals("sha256:../../etc")).unwrap_err();
        assert!(matches!(err, CloudError::InvalidKey { .. }), "{err}");
    }

    #[test]
    fn approvals_are_kept_per_change_and_signer() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(block_on(store.read_approvals(&digest)).unwrap().approvals, []);
        let approval = Approval {
            signer: "auditor-a".into(),
            action: "image.publish".into(),
            digest: digest.clone(),
            signature: "c2ln".into(),
        };
        let key = block_on(store.put_approval(&approval)).unwrap();
        assert_eq!(key, format!("approvals/{digest}/auditor-a.json"));
        fs::write(dir.path().join(format!("approvals/{digest}/junk.json")), "{").unwrap();
        let read = block_on(store.read_approvals(&digest)).unwrap();
        assert_eq!(read.approvals, [approval]);
        assert_eq!(read.skipped.len(), 1, "{:?}", read.skipped);
        assert!(read.skipped[0].contains("junk.json"), "{:?}", read.skipped);
    }

    fn holder(run: &str, pids: Vec<u32>) -> lease::LeaseHolder {
        lease::LeaseHolder {
            run: run.to_owned(),
            description: format!("terraform of {run}"),
            host: lease::this_host(),
            pids,
        }
    }

    #[test]
    fn the_lease_is_held_by_one_run_renewed_by_it_and_taken_over_only_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let minute = std::time::Duration::from_secs(60);
        let alive = vec![std::process::id()];
        let (run_a, run_b) = (holder("run-a", alive.clone()), holder("run-b", alive));
        let a = LeaseBody::new(&run_a, now, minute);
        let LeaseAttempt::Acquired { token, took_over: None } = block_on(store.try_lease(&a, now)).unwrap() else {
            panic!("a fresh store's lease is free");
        };
        // Another run is told who holds it, until it expires.
        let b = LeaseBody::new(&run_b, now, minute);
        assert_eq!(
            block_on(store.try_lease(&b, now)).unwrap(),
            LeaseAttempt::Held(a.clone())
        );
        // The holder renews it (another process of the same run shares it).
        let later = now + std::time::Duration::from_secs(30);
        let renewed = LeaseBody::new(&run_a, later, minute);
        let LeaseAttempt::Acquired {
            token: renewed_token, ..
        } = block_on(store.try_lease(&renewed, later)).unwrap()
        else {
            panic!("the holder renews");
        };
        // Releasing an old token leaves the renewed lease alone.
        block_on(store.release_lease(&token)).unwrap();
        assert!(dir.path().join(LEASE_KEY).exists());
        // Past its expiry, another run takes it over and learns whose it was.
        let expired = later + minute;
        let b = LeaseBody::new(&run_b, expired, minute);
        match block_on(store.try_lease(&b, expired)).unwrap() {
            LeaseAttempt::Acquired { took_over, token } => {
                assert_eq!(took_over, Some(renewed));
                block_on(store.release_lease(&token)).unwrap();
            }
            held => panic!("an expired lease is taken over, not {held:?}"),
        }
        assert!(!dir.path().join(LEASE_KEY).exists());
        block_on(store.release_lease(&renewed_token)).unwrap();
        // A damaged lease stops everyone, saying what to do.
        fs::write(dir.path().join(LEASE_KEY), "not json").unwrap();
        let err = block_on(store.try_lease(&a, now)).unwrap_err();
        assert!(err.to_string().contains("delete the lease object"), "{err}");
    }

    #[test]
    fn a_folder_lease_whose_processes_are_gone_is_taken_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let hour = std::time::Duration::from_secs(3600);
        let dead = LeaseBody::new(&holder("run-dead", vec![gone]), now, hour);
        assert!(matches!(
            block_on(store.try_lease(&dead, now)).unwrap(),
            LeaseAttempt::Acquired { .. }
        ));
        let next = LeaseBody::new(&holder("run-next", vec![std::process::id()]), now, hour);
        match block_on(store.try_lease(&next, now)).unwrap() {
            LeaseAttempt::Acquired { took_over, .. } => assert_eq!(took_over, Some(dead)),
            held => panic!("a dead holder's lease is taken over, not {held:?}"),
        }
    }

    #[test]
    fn bucket_locations_parse_and_print_as_given() {
        let location: BucketLocation = "s3://bank-evidence/prod".parse().unwrap();
        assert_eq!(location.prefix, "prod/");
        assert_eq!(location.to_string(), "s3://bank-evidence/prod/");
        assert_eq!("s3://bank-evidence".parse::<BucketLocation>().unwrap().prefix, "");
        for bad in [
            "s3://B",
            "s3://ab",
            "http://bucket/x",
            "s3://bucket//x",
            "s3://bucket/a/../b",
        ] {
            assert!(bad.parse::<BucketLocation>().is_err(), "{bad}");
        }
        assert_eq!(
            "state".parse::<StoreAddress>().unwrap(),
            StoreAddress::Folder(PathBuf::from("state"))
        );
    }

    #[test]
    fn concurrent_writers_never_tear_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let store = FolderStore::open(&root).unwrap();
        block_on(store.put_record(RecordKind::Policy, "shared", &[9; 4096], None)).unwrap();
        let writers: Vec<_> = (0..4u8)
            .map(|n| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let store = FolderStore::open(&root).unwrap();
                    let mut written = 0;
                    for _ in 0..50 {
                        let current = block_on(store.get_record(RecordKind::Policy, "shared"))
                            .unwrap()
                            .unwrap();
                        match block_on(store.put_record(
                            RecordKind::Policy,
                            "shared",
                            &[n; 4096],
                            Some(&current.version),
                        )) {
                            Ok(_) => written += 1,
                            Err(CloudError::RecordChanged { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    written
                })
            })
            .collect();
        for _ in 0..200 {
            if let Some(body) = body(&store, "shared") {
                assert_eq!(body.len(), 4096);
                assert!(body.iter().all(|b| *b == body[0]));
            }
        }
        let written: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(written > 0);
    }
}
