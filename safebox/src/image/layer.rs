//! Turning one input into one deterministic ramdisk layer.
//!
//! A tar archive is first spooled (its entries indexed, its data copied to a scratch file) so
//! that the layer can be written in sorted path order whatever order the archive had, with
//! flat memory. Entries are normalised: paths relative to the image root, explicit parent
//! directories, modes 0755/0644/0777, owner root, times clamped to `source_date_epoch`.
//! Anything that could write outside the image root fails closed, naming the entry.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};

use super::cpio::{CpioWriter, MODE_EXEC, MODE_FILE};

/// Buffer for the scratch file: large reads and writes instead of 8 KiB system calls.
const SPOOL_BUFFER: usize = 1 << 20;

/// Why a layer could not be made from its input.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The input is not a tar archive (or is a damaged one).
    #[error("is not a readable tar archive ({0}); to place a single file, set destination")]
    NotTar(String),
    /// An entry would land outside the image root.
    #[error("entry {entry:?} {reason}; the layer is refused")]
    UnsafeEntry {
        /// The entry's path as the archive names it.
        entry: String,
        /// Why it is unsafe.
        reason: &'static str,
    },
    /// An entry of a kind the image cannot hold.
    #[error(
        "entry {entry:?} is a {kind}, which image layers do not support; replace it with a regular file or symlink"
    )]
    UnsupportedEntry {
        /// The entry.
        entry: String,
        /// Its kind.
        kind: &'static str,
    },
    /// Two entries for one path.
    #[error("entry {entry:?} appears twice in the archive; keep one")]
    DuplicateEntry {
        /// The path.
        entry: String,
    },
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

enum Node {
    Dir,
    File { offset: u64, size: u64, mode: u32 },
    Symlink(String),
}

struct Entry {
    node: Node,
    mtime: u32,
}

/// The contents of one layer, ordered by path, with file data in a scratch file.
pub struct LayerTree {
    entries: BTreeMap<String, Entry>,
    data: Option<File>,
    epoch: u32,
}

impl LayerTree {
    /// An empty layer whose times clamp to `epoch`.
    #[must_use]
    pub fn new(epoch: u32) -> Self {
        Self {
            entries: BTreeMap::new(),
            data: None,
            epoch,
        }
    }

    /// Indexes a tar archive, copying file data into `scratch`.
    ///
    /// # Errors
    /// A [`LayerError`] naming the offending entry.
    pub fn from_tar(reader: impl Read, scratch: File, epoch: u32) -> Result<Self, LayerError> {
        let mut tree = Self::new(epoch);
        let mut spool = BufWriter::with_capacity(SPOOL_BUFFER, scratch);
        let mut offset = 0u64;
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| LayerError::NotTar(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| LayerError::NotTar(e.to_string()))?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let header = entry.header();
            let mtime = header
                .mtime()
                .map_or(epoch, |t| u32::try_from(t).unwrap_or(u32::MAX).min(epoch));
            let mode = header.mode().unwrap_or(0o644);
            let kind = header.entry_type();
            let Some(path) = normalise(&raw_path)? else {
                // The archive's root folder itself ("./").
                continue;
            };
            let node = match kind {
                tar::EntryType::Directory => Node::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    let copied = io::copy(&mut entry, &mut spool)?;
                    if copied != size {
                        return Err(LayerError::NotTar(format!("entry {raw_path:?} is truncated")));
                    }
                    let node = Node::File {
                        offset,
                        size,
                        mode: if mode & 0o111 != 0 { MODE_EXEC } else { MODE_FILE },
                    };
                    offset += size;
                    node
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    check_link_target(&raw_path, &path, &target)?;
                    Node::Symlink(target)
                }
                tar::EntryType::Link => return Err(unsupported(&raw_path, "hard link")),
                tar::EntryType::Char => return Err(unsupported(&raw_path, "character device")),
                tar::EntryType::Block => return Err(unsupported(&raw_path, "block device")),
                tar::EntryType::Fifo => return Err(unsupported(&raw_path, "FIFO")),
                // PAX and GNU long-name records are consumed by the tar reader itself.
                _ => return Err(unsupported(&raw_path, "special entry")),
            };
            tree.insert(path, raw_path, Entry { node, mtime })?;
        }
        if tree.entries.is_empty() {
            return Err(LayerError::NotTar("it holds no entries".into()));
        }
        spool.flush()?;
        let mut scratch = spool.into_inner().map_err(io::IntoInnerError::into_error)?;
        scratch.seek(SeekFrom::Start(0))?;
        tree.data = Some(scratch);
        Ok(tree)
    }

    /// Adds one entry; a second entry for a path is an error naming it.
    fn insert(&mut self, path: String, raw: String, entry: Entry) -> Result<(), LayerError> {
        if self.entries.contains_key(&path) {
            return Err(LayerError::DuplicateEntry { entry: raw });
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Adds the parent folders no entry named, so every path's parents exist in the layer.
    fn add_parents(&mut self) {
        let parents: Vec<String> = self
            .entries
            .keys()
            .flat_map(|path| {
                path.match_indices('/')
                    .map(|(i, _)| path[..i].to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        for parent in parents {
            self.entries.entry(parent).or_insert(Entry {
                node: Node::Dir,
                mtime: self.epoch,
            });
        }
    }

    /// Writes the layer as a newc archive, in path order.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write(mut self, out: impl Write) -> Result<(), LayerError> {
        self.add_parents();
        let mut cpio = CpioWriter::new(out);
        let mut data = self.data.take();
        for (path, entry) in &self.entries {
            match &entry.node {
                Node::Dir => cpio.dir(path, entry.mtime)?,
                Node::Symlink(target) => cpio.symlink(path, target, entry.mtime)?,
                Node::File { offset, size, mode } => {
                    let file = data.as_mut().ok_or_else(|| io::Error::other("layer data missing"))?;
                    file.seek(SeekFrom::Start(*offset))?;
                    // Entries are in path order, not spool order: buffer each one on its own.
                    let capacity = usize::try_from(*size).unwrap_or(SPOOL_BUFFER).clamp(1, SPOOL_BUFFER);
                    let mut reader = io::BufReader::with_capacity(capacity, Read::take(&mut *file, *size));
                    cpio.file(path, *mode, entry.mtime, *size, &mut reader)?;
                }
            }
        }
        cpio.finish()?;
        Ok(())
    }
}

/// Writes a layer holding the files `files` (archive path, mode, size, contents), with
/// parents, as a newc archive.
///
/// # Errors
/// I/O errors.
pub fn write_files(
    files: Vec<(String, u32, u64, Box<dyn Read + '_>)>,
    epoch: u32,
    out: impl Write,
) -> Result<(), LayerError> {
    let mut names: BTreeMap<String, (u32, u64, Box<dyn Read + '_>)> = BTreeMap::new();
    for (path, mode, size, reader) in files {
        names.insert(path, (mode, size, reader));
    }
    let mut parents: Vec<String> = names
        .keys()
        .flat_map(|path| {
            path.match_indices('/')
                .map(|(i, _)| path[..i].to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    parents.sort();
    parents.dedup();
    // Interleave folders and files in one path order.
    let mut order: Vec<(String, bool)> = parents.into_iter().map(|p| (p, true)).collect();
    order.extend(names.keys().map(|p| (p.clone(), false)));
    order.sort();
    let mut cpio = CpioWriter::new(out);
    for (path, is_dir) in order {
        if is_dir {
            cpio.dir(&path, epoch)?;
        } else if let Some((mode, size, mut reader)) = names.remove(&path) {
            cpio.file(&path, mode, epoch, size, &mut reader)?;
        }
    }
    cpio.finish()?;
    Ok(())
}

fn unsupported(entry: &str, kind: &'static str) -> LayerError {
    LayerError::UnsupportedEntry {
        entry: entry.to_owned(),
        kind,
    }
}

/// The entry's path relative to the image root; `None` for the root itself.
fn normalise(raw: &str) -> Result<Option<String>, LayerError> {
    let unsafe_entry = |reason| LayerError::UnsafeEntry {
        entry: raw.to_owned(),
        reason,
    };
    if raw.starts_with('/') {
        return Err(unsafe_entry("has an absolute path"));
    }
    if raw.contains('\0') {
        return Err(unsafe_entry("has a NUL byte in its path"));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_entry("climbs out of the image root with \"..\"")),
            p => parts.push(p),
        }
    }
    let path = parts.join("/");
    if path == super::cpio::TRAILER {
        // newc ends an archive with an entry of this name: a layer holding one would end
        // early for the kernel, dropping everything after it from the image.
        return Err(unsafe_entry("is named like the newc end-of-archive marker"));
    }
    Ok((!parts.is_empty()).then_some(path))
}

/// A relative link target must stay inside the image root; an absolute one always does,
/// because it resolves against the image's own root.
fn check_link_target(raw: &str, path: &str, target: &str) -> Result<(), LayerError> {
    if target.is_empty() {
        return Err(LayerError::UnsafeEntry {
            entry: raw.to_owned(),
            reason: "is a symlink with an empty target",
        });
    }
    if target.starts_with('/') {
        return Ok(());
    }
    // Depth of the folder holding the link.
    let mut depth = path.matches('/').count() as i64;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(LayerError::UnsafeEntry {
                entry: raw.to_owned(),
                reason: "is a symlink that points outside the image root",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar with `entries` (path, kind, data or link target, mode), in the given order.
    pub(crate) fn tar_of(entries: &[(&str, tar::EntryType, &[u8], u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(*mode);
            header.set_mtime(4_000_000_000);
            header.set_uid(1000);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    header.set_size(0);
                    // Set raw name fields so unsafe paths are written as given.
                    header
                        .set_link_name_literal(std::str::from_utf8(data).unwrap())
                        .unwrap();
                    set_raw_path(&mut header, path);
                    header.set_cksum();
                    builder.append(&header, &[][..]).unwrap();
                }
                _ => {
                    header.set_size(data.len() as u64);
                    set_raw_path(&mut header, path);
                    header.set_cksum();
                    builder.append(&header, *data).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn set_raw_path(header: &mut tar::Header, path: &str) {
        let name = &mut header.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
    }

    fn layer_of(tar: &[u8]) -> Result<Vec<u8>, LayerError> {
        let tree = LayerTree::from_tar(tar, tempfile::tempfile().unwrap(), 1000)?;
        let mut out = Vec::new();
        tree.write(&mut out)?;
        Ok(out)
    }

    fn names(cpio: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut pos = 0;
        while pos + 110 <= cpio.len() {
            let field = |i: usize| {
                usize::from_str_radix(
                    std::str::from_utf8(&cpio[pos + 6 + i * 8..pos + 14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (size, name_size) = (field(6), field(11));
            let name = String::from_utf8(cpio[pos + 110..pos + 110 + name_size - 1].to_vec()).unwrap();
            pos = (pos + 110 + name_size).next_multiple_of(4);
            pos = (pos + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
            names.push(name);
        }
        names
    }

    #[test]
    fn sorts_entries_and_adds_parents_whatever_the_archive_order() {
        use tar::EntryType::{Regular, Symlink};
        let a = tar_of(&[
            ("./usr/bin/tool", Regular, b"x", 0o700),
            ("etc/conf", Regular, b"y", 0o600),
            ("usr/bin/t", Symlink, b"tool", 0o777),
        ]);
        let b = tar_of(&[
            ("usr/bin/t", Symlink, b"tool", 0o777),
            ("etc/conf", Regular, b"y", 0o644),
            ("usr/bin/tool", Regular, b"x", 0o755),
        ]);
        let (la, lb) = (layer_of(&a).unwrap(), layer_of(&b).unwrap());
        assert_eq!(la, lb, "order, owners and permission noise must not matter");
        assert_eq!(
            names(&la),
            ["etc", "etc/conf", "usr", "usr/bin", "usr/bin/t", "usr/bin/tool"]
        );
    }

    #[test]
    fn refuses_entries_that_escape_the_root() {
        use tar::EntryType::{Regular, Symlink};
        for (entries, needle) in [
            (vec![("/etc/passwd", Regular, &b"x"[..], 0o644)], "absolute path"),
            (vec![("a/../../x", Regular, &b"x"[..], 0o644)], "\"..\""),
            (
                vec![("a/link", Symlink, &b"../../etc"[..], 0o777)],
                "outside the image root",
            ),
            // The newc end marker would cut the layer short for the kernel.
            (vec![("TRAILER!!!", Regular, &b"x"[..], 0o644)], "end-of-archive marker"),
            (
                vec![("./TRAILER!!!", Regular, &b"x"[..], 0o644)],
                "end-of-archive marker",
            ),
        ] {
            let err = layer_of(&tar_of(&entries)).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert!(err.to_string().contains(entries[0].0), "names the entry: {err}");
        }
        // Absolute link targets resolve inside the image and are fine.
        layer_of(&tar_of(&[("bin/sh", Symlink, b"/bin/busybox", 0o777)])).unwrap();
        layer_of(&tar_of(&[("a/b/link", Symlink, b"../c", 0o777)])).unwrap();
    }

    #[test]
    fn refuses_duplicates_hard_links_devices_and_non_tars() {
        use tar::EntryType::{Link, Regular};
        let dup = tar_of(&[("x", Regular, b"1", 0o644), ("./x", Regular, b"2", 0o644)]);
        assert!(matches!(layer_of(&dup), Err(LayerError::DuplicateEntry { .. })));
        let link = tar_of(&[("x", Regular, b"1", 0o644), ("y", Link, b"x", 0o644)]);
        assert!(matches!(
            layer_of(&link),
            Err(LayerError::UnsupportedEntry { kind: "hard link", .. })
        ));
        assert!(matches!(
            layer_of(b"this is not a tar archive, just some text that is long enough to look at"),
            Err(LayerError::NotTar(_))
        ));
    }
}
