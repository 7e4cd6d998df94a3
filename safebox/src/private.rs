//! Folders and files that only this user may read or change: box keys, the simulated
//! attestation root's key, the image build cache.
//!
//! A private folder is created with mode 0700 and, when it already exists, is trusted only if
//! it is a real folder (not a symbolic link) owned by this user that nobody else can write to;
//! one that others could only read is closed (chmod 700) before use. Anything else is refused
//! with the command that fixes it, rather than used: a folder another local user planted or can
//! write to could hand this user a forged key or build.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// Why a private folder or file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The folder or file is not private to this user.
    #[error("{path} {problem}, so another user could read or replace what it holds; {fix}")]
    NotPrivate {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What to do.
        fix: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PrivateError {
    let path = path.to_path_buf();
    move |source| PrivateError::Io { action, path, source }
}

/// Checks that `path` (described by its `symlink_metadata`) is not a link, belongs to this
/// user and is closed to everyone else.
///
/// # Errors
/// [`PrivateError::NotPrivate`] naming what is wrong and how to fix it.
pub fn check(path: &Path, metadata: &fs::Metadata) -> Result<(), PrivateError> {
    let uid = rustix::process::getuid().as_raw();
    let not_private = |problem: String, fix: String| PrivateError::NotPrivate {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    if metadata.file_type().is_symlink() {
        return Err(not_private(
            "is a symbolic link".into(),
            format!("remove the link (rm {})", path.display()),
        ));
    }
    if metadata.uid() != uid {
        return Err(not_private(
            format!("belongs to user id {}, not to this user ({uid})", metadata.uid()),
            format!("remove it (rm -r {}) or run as its owner", path.display()),
        ));
    }
    if metadata.mode() & 0o077 != 0 {
        let wanted = if metadata.is_dir() { "700" } else { "600" };
        return Err(not_private(
            format!("has mode {:o}, open to other users", metadata.mode() & 0o777),
            format!("run chmod {wanted} {}", path.display()),
        ));
    }
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700 if needed, then checks that it is private.
/// An existing folder of this user's that others may read but not write is closed first:
/// nobody else can have put anything in it.
///
/// # Errors
/// A [`PrivateError`].
pub fn create_dir(dir: &Path) -> Result<(), PrivateError> {
    use std::os::unix::fs::PermissionsExt as _;
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating", dir)(e)),
    }
    let metadata = fs::symlink_metadata(dir).map_err(io("reading", dir))?;
    let ours = metadata.is_dir() && metadata.uid() == rustix::process::getuid().as_raw();
    if ours && metadata.mode() & 0o077 != 0 && metadata.mode() & 0o022 == 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("closing", dir))?;
    }
    check_existing(dir)?;
    // Whoever can write to the folder above could swap this one for theirs, unless that
    // folder is sticky (as /tmp is): then only its owner may rename or remove it.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let above = fs::metadata(parent).map_err(io("reading", parent))?;
        let uid = rustix::process::getuid().as_raw();
        let another_owner = above.uid() != uid && above.uid() != 0;
        let others_write = above.mode() & 0o022 != 0 || another_owner;
        if others_write && above.mode() & 0o1000 == 0 {
            return Err(PrivateError::NotPrivate {
                path: dir.to_path_buf(),
                problem: format!(
                    "is in {}, which other users can write to (owner {}, mode {:o}, not sticky)",
                    parent.display(),
                    above.uid(),
                    above.mode() & 0o7777
                ),
                fix: format!(
                    "keep it in a folder only you can write to, or run chmod o-w,g-w {}",
                    parent.display()
                ),
            });
        }
    }
    Ok(())
}

/// Checks that the existing `path` is private.
///
/// # Errors
/// A [`PrivateError`], including when it cannot be read.
pub fn check_existing(path: &Path) -> Result<(), PrivateError> {
    let metadata = fs::symlink_metadata(path).map_err(io("reading", path))?;
    check(path, &metadata)
}

/// Writes `body` to `path` with mode 0600, atomically (a staging file renamed over it).
///
/// # Errors
/// A [`PrivateError`].
pub fn write_file(path: &Path, body: &[u8]) -> Result<(), PrivateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let staging = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .map_err(io("creating", &staging))?;
    let written = file
        .write_all(body)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&staging, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&staging);
        return Err(io("writing", path)(e));
    }
    Ok(())
}

/// Reads the private file `path`, after checking it and its folder are private; `None` when
/// it does not exist.
///
/// # Errors
/// A [`PrivateError`].
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, PrivateError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", path)(e)),
    };
    if let Some(dir) = path.parent() {
        check_existing(dir)?;
    }
    check(path, &metadata)?;
    fs::read(path).map(Some).map_err(io("reading", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn private_folders_are_made_closed_and_open_ones_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("a/b");
        create_dir(&private).unwrap();
        assert_eq!(fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        let file = private.join("k");
        write_file(&file, b"secret").unwrap();
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_file(&file).unwrap().unwrap(), b"secret");
        assert!(read_file(&private.join("none")).unwrap().is_none());

        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_file(&file).unwrap_err().to_string().contains("chmod 600"));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        // A folder others could write to is refused; a file in it is not trusted either.
        fs::set_permissions(&private, fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_dir(&private).unwrap_err();
        assert!(err.to_string().contains("chmod 700"), "{err}");
        assert!(read_file(&file).is_err(), "a file in an open folder is not trusted");
        // One in a folder others can write to (not sticky) could be swapped: refused.
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_dir(&open.join("inner")).unwrap_err();
        assert!(err.to_string().contains("other users can write to"), "{err}");
        // Sticky, as /tmp is: fine.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        create_dir(&open.join("inner")).unwrap();
        // One others could only read is closed and used.
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&private).unwrap();
        assert_eq!(fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        // Another user's folder is refused.
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        if rustix::process::getuid().is_root() {
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let err = create_dir(&theirs).unwrap_err();
            assert!(err.to_string().contains("belongs to user id 65534"), "{err}");
        }

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        assert!(create_dir(&link).unwrap_err().to_string().contains("symbolic link"));
    }
}
