//! Where Safebox keeps its memory: records, the audit log, and the lock that orders writers.
//!
//! A [`Store`] is separate from the backend that runs images and boxes: records (what Terraform
//! created, for refresh, import and governance) and the hash-chained audit log must outlive any
//! one machine when a team shares them, while artifacts and boxes live wherever the backend
//! puts them. [`FolderStore`] keeps everything in the provider's `state_dir`:
//! `<state_dir>/<kind>/<id>.json` per record, `<state_dir>/audit.log`, and
//! `<state_dir>/.lock`, which every writer holds exclusively so that two Terraform runs sharing
//! a `state_dir` serialise their writes. Each write goes to a temporary file in the same folder,
//! is flushed to disk and then renamed over the record, so a crash leaves the old or the new
//! record, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::cloud::{check_record_id, CloudError, RecordKind};
use crate::govern::audit::{self, AuditEntry, AuditHead};

/// The lock file every writer of a `state_dir` holds.
pub(crate) const LOCK_FILE: &str = ".lock";
/// The audit log of enforced governed changes. Destroy never removes it: history is kept.
pub const AUDIT_LOG: &str = "audit.log";

/// Records and the audit log.
#[async_trait]
pub trait Store: Send + Sync {
    /// Where the store is, for messages and the plan report (a folder, or a bucket and prefix).
    fn location(&self) -> String;

    /// Reads the record `kind`/`id`; `None` when there is none.
    async fn get_record(&self, kind: RecordKind, id: &str) -> Result<Option<Vec<u8>>, CloudError>;

    /// Writes the record `kind`/`id` atomically: readers see the old or the new body, never a mix.
    async fn put_record(&self, kind: RecordKind, id: &str, body: &[u8]) -> Result<(), CloudError>;

    /// Removes the record `kind`/`id`; removing a missing record is not an error.
    async fn delete_record(&self, kind: RecordKind, id: &str) -> Result<(), CloudError>;

    /// The audit log, as written (one canonical JSON entry per line); empty when nothing was
    /// logged yet.
    async fn read_audit(&self) -> Result<String, CloudError>;

    /// Appends an entry to the audit log (filling in its sequence and chain) and returns the
    /// log's new head, unless the log's chain is broken or it no longer holds `floor` (the
    /// latest head the caller saw): a rolled-back log is never extended.
    async fn append_audit(&self, entry: AuditEntry, floor: Option<&AuditHead>) -> Result<AuditHead, CloudError>;
}

/// The embedded store: a `state_dir` on this machine.
#[derive(Debug, Clone)]
pub struct FolderStore {
    root: PathBuf,
}

impl FolderStore {
    /// Opens (creating if needed) the store at `state_dir`, known by its canonical path so that
    /// `.safebox`, `./.safebox` and its absolute path are one store.
    ///
    /// # Errors
    /// [`CloudError::Io`] when the folder cannot be created or resolved.
    pub fn open(state_dir: &Path) -> Result<Self, CloudError> {
        Ok(Self {
            root: open_state_dir(state_dir)?,
        })
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
}

#[async_trait]
impl Store for FolderStore {
    fn location(&self) -> String {
        self.root.display().to_string()
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
        locked(&self.root, || write_atomically(&path, body))
    }

    async fn delete_record(&self, kind: RecordKind, id: &str) -> Result<(), CloudError> {
        let path = self.record_path(kind, id)?;
        locked(&self.root, || {
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

    #[test]
    fn records_round_trip_and_leave_nothing_when_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(&dir.path().join("state")).unwrap();
        assert_eq!(block_on(store.get_record(RecordKind::Policy, "pol-1")).unwrap(), None);
        block_on(store.put_record(RecordKind::Policy, "pol-1", b"one")).unwrap();
        block_on(store.put_record(RecordKind::Policy, "pol-1", b"two")).unwrap();
        assert_eq!(
            block_on(store.get_record(RecordKind::Policy, "pol-1"))
                .unwrap()
                .as_deref(),
            Some(&b"two"[..])
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
    fn refuses_ids_that_would_escape_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let err = block_on(store.put_record(RecordKind::Policy, "../escape", b"x")).unwrap_err();
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
                    let store = FolderStore::open(&root).unwrap();
                    for _ in 0..50 {
                        block_on(store.put_record(RecordKind::Policy, "shared", &[n; 4096])).unwrap();
                    }
                })
            })
            .collect();
        let store = FolderStore::open(&root).unwrap();
        for _ in 0..200 {
            if let Some(body) = block_on(store.get_record(RecordKind::Policy, "shared")).unwrap() {
                assert_eq!(body.len(), 4096);
                assert!(body.iter().all(|b| *b == body[0]));
            }
        }
        for w in writers {
            w.join().unwrap();
        }
    }
}
