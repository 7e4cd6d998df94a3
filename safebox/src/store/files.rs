//! [`Objects`] over a folder: keys are relative paths, a version is the SHA-256 of a file's
//! bytes, and conditional writes hold the folder's lock file while they compare and write.

use std::fs::{self, OpenOptions};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};

use super::objects::{precondition, Condition, Listed, Object, Objects, Version};
use super::{io, locked, write_atomically};
use crate::cloud::CloudError;

/// The files under a folder, as objects.
#[derive(Debug, Clone)]
pub(crate) struct Files {
    root: PathBuf,
}

impl Files {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The path of `key`. Keys are made by the store from checked parts (record ids, digests,
    /// signer ids), never taken from outside as they are.
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn read(&self, key: &str) -> Result<Option<Object>, CloudError> {
        let path = self.path(key);
        match read_regular(&path) {
            Ok(body) => Ok(Some(Object {
                version: version_of(&body),
                body,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    fn holds(&self, key: &str, condition: Condition<'_>) -> Result<bool, CloudError> {
        let current = self.read(key)?;
        Ok(match condition {
            Condition::Any => true,
            Condition::Absent => current.is_none(),
            Condition::Matches(version) => current.is_some_and(|c| c.version == *version),
        })
    }
}

/// A file's version: the SHA-256 of its bytes.
fn version_of(body: &[u8]) -> Version {
    Version(hex::encode(Sha256::digest(body)))
}

/// Reads `path` if it is a regular file, opened without blocking so that a FIFO never stalls
/// the read; anything else is an error of kind `InvalidData`.
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut body = Vec::new();
    file.read_to_end(&mut body)?;
    Ok(body)
}

#[async_trait]
impl Objects for Files {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, CloudError> {
        self.read(key)
    }

    async fn get_version(&self, key: &str, _: Option<&str>) -> Result<Vec<u8>, CloudError> {
        let path = self.path(key);
        read_regular(&path).map_err(io("reading", &path))
    }

    async fn put(&self, key: &str, body: &[u8], condition: Condition<'_>) -> Result<Version, CloudError> {
        locked(&self.root, || {
            if !self.holds(key, condition)? {
                return Err(precondition(self, key, condition));
            }
            write_atomically(&self.path(key), body)?;
            Ok(version_of(body))
        })
    }

    async fn delete(&self, key: &str, version: Option<&Version>) -> Result<(), CloudError> {
        let path = self.path(key);
        locked(&self.root, || {
            if let Some(version) = version {
                if !self.holds(key, Condition::Matches(version))? {
                    return if self.read(key)?.is_none() {
                        Ok(())
                    } else {
                        Err(precondition(self, key, Condition::Matches(version)))
                    };
                }
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io("removing", &path)(e)),
            }
            // Emptied folders go too, so destroy leaves nothing behind; failing to remove one
            // (something else is in it) is fine.
            let mut dir = path.parent();
            while let Some(folder) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
                if fs::remove_dir(folder).is_err() {
                    break;
                }
                dir = folder.parent();
            }
            Ok(())
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, CloudError> {
        // Prefixes here always name a folder (`approvals/<digest>/`).
        let dir = self.path(prefix);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &dir)(e)),
        };
        let mut listed: Vec<Listed> = entries
            .flatten()
            .filter_map(|entry| {
                let metadata = entry.metadata().ok().filter(fs::Metadata::is_file)?;
                Some(Listed {
                    key: format!("{prefix}{}", entry.file_name().to_str()?),
                    version_id: None,
                    latest: true,
                    delete_marker: false,
                    size: metadata.len(),
                })
            })
            .collect();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }
}
