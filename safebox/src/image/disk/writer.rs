//! The disk as an ordered list of regions (the bytes between them are zero), and the two
//! ways to emit it: into a sparse file by seeking, or into a SHA-256 in one sequential pass
//! (the digest of the disk without writing it).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

use openssl::sha::Sha256;

use super::fat32::{
    boot_sector, fs_info, lfn_checksum, lfn_entries, short_entry, volume_serial, worst_dir_entries, Layout,
};
use super::gpt::{derive_guid, gpt_entries, gpt_header, protective_mbr};
use super::names::{check_name, plan_names, volume_label, DirName};
use super::{
    invalid, to_u32, DiskError, PartitionKind, PayloadDisk, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID,
    BACKUP_BOOT_SECTOR, BLOCK_SIZE, COPY_BUF, DIR_ENTRY_SIZE, END_OF_CHAIN, FSINFO_SECTOR, GPT_ENTRY_SECTORS,
    MAX_DIR_ENTRIES, MAX_FILE_LEN, MIB, NUM_FATS, ROOT_CLUSTER, SECTOR,
};

/// A file to place: its path components (the last one is the file's name), length and reader.
pub(super) struct Placed<'r, 'a> {
    pub(super) path: &'a str,
    pub(super) components: Vec<&'a str>,
    pub(super) len: u64,
    pub(super) reader: &'r mut dyn Read,
}

/// A directory's child.
#[derive(Debug, Clone, Copy)]
enum Child {
    Dir(usize),
    File(usize),
}

/// One directory: root (index 0) or a subdirectory, with its children in first-named order.
struct Dir<'a> {
    name: &'a str,
    parent: usize,
    children: Vec<Child>,
    names: Vec<DirName>,
    first_cluster: u64,
    clusters: u64,
}

impl Dir<'_> {
    /// Entries: the label (root) or `.` and `..`, then each child with its long-name entries.
    fn entry_count(&self, root: bool) -> u64 {
        let own = if root { 1 } else { 2 };
        own + self.names.iter().map(DirName::entry_count).sum::<u64>()
    }
}

/// The directory tree of `files`: directories in the order their first file names them.
fn tree<'a>(files: &[Placed<'_, 'a>]) -> Result<Vec<Dir<'a>>, DiskError> {
    let mut dirs = vec![Dir {
        name: "",
        parent: 0,
        children: Vec::new(),
        names: Vec::new(),
        first_cluster: 0,
        clusters: 0,
    }];
    for (index, file) in files.iter().enumerate() {
        let Some((_, folders)) = file.components.split_last() else {
            return Err(invalid("a file name is empty"));
        };
        let mut at = 0;
        for &folder in folders {
            check_name(folder)?;
            let existing = dirs[at].children.iter().find_map(|child| match child {
                Child::Dir(d) if dirs[*d].name == folder => Some(*d),
                _ => None,
            });
            at = match existing {
                Some(d) => d,
                None => {
                    dirs.push(Dir {
                        name: folder,
                        parent: at,
                        children: Vec::new(),
                        names: Vec::new(),
                        first_cluster: 0,
                        clusters: 0,
                    });
                    let new = dirs.len() - 1;
                    dirs[at].children.push(Child::Dir(new));
                    new
                }
            };
        }
        dirs[at].children.push(Child::File(index));
    }
    for d in 0..dirs.len() {
        let names: Vec<&str> = dirs[d]
            .children
            .iter()
            .map(|child| match child {
                Child::Dir(c) => dirs[*c].name,
                Child::File(f) => files[*f].components.last().copied().unwrap_or_default(),
            })
            .collect();
        dirs[d].names = plan_names(&names)?;
        let entries = dirs[d].entry_count(d == 0);
        if entries > MAX_DIR_ENTRIES {
            return Err(invalid(format!(
                "a directory would need {entries} entries; FAT allows {MAX_DIR_ENTRIES}"
            )));
        }
    }
    Ok(dirs)
}

/// Where a region's bytes come from.
enum Content {
    Bytes(Vec<u8>),
    /// A FAT: the reserved entries, then one chain per `(first cluster, clusters)`.
    Fat(Vec<(u32, u32)>),
    /// File `index`'s data.
    File(usize),
}

struct Region {
    at: u64,
    len: u64,
    content: Content,
}

/// Everything a disk holds, in ascending offset order.
pub(super) struct Plan {
    size: u64,
    regions: Vec<Region>,
}

/// The disk kinds differ in partition type and in how the size is chosen.
pub(super) fn plan(
    seed: &[u8; 32],
    label: &str,
    kind: &PartitionKind,
    files: &[Placed<'_, '_>],
    size: u64,
) -> Result<Plan, DiskError> {
    let label = volume_label(label)?;
    let mut dirs = tree(files)?;
    if let Some(file) = files.iter().find(|f| f.len > MAX_FILE_LEN) {
        return Err(invalid(format!(
            "{:?} has {} bytes; FAT32 files hold at most {MAX_FILE_LEN}",
            file.path, file.len
        )));
    }
    let lens: Vec<u64> = files.iter().map(|f| f.len).collect();
    let layout =
        Layout::for_size(size).ok_or_else(|| invalid("the files are too large for a FAT32 volume (2 TiB at most)"))?;

    // Allocation: the root directory from cluster 2, then the subdirectories, then each file.
    let mut next_cluster = u64::from(ROOT_CLUSTER);
    for (index, dir) in dirs.iter_mut().enumerate() {
        dir.first_cluster = next_cluster;
        dir.clusters = layout.dir_clusters(dir.entry_count(index == 0));
        next_cluster += dir.clusters;
    }
    let mut allocation = Vec::with_capacity(files.len());
    for &len in &lens {
        let clusters = layout.clusters_for(len);
        allocation.push(if clusters == 0 { 0 } else { next_cluster });
        next_cluster += clusters;
    }
    let used_clusters = next_cluster - u64::from(ROOT_CLUSTER);
    if used_clusters > layout.cluster_count {
        return Err(invalid("the files do not fit the volume"));
    }
    let free_clusters = layout.cluster_count - used_clusters;
    let next_free = if free_clusters == 0 {
        u32::MAX
    } else {
        to_u32(next_cluster, "cluster")?
    };

    let mut regions = Vec::new();
    let bytes = |at: u64, content: Vec<u8>| Region {
        at,
        len: content.len() as u64,
        content: Content::Bytes(content),
    };

    // Protective MBR and primary GPT.
    let entries = gpt_entries(&layout, kind, derive_guid("safebox-partition-guid", seed));
    let entries_crc = crc32fast::hash(&entries);
    let disk_guid = derive_guid("safebox-disk-guid", seed);
    regions.push(bytes(0, protective_mbr(&layout).to_vec()));
    regions.push(bytes(
        SECTOR,
        gpt_header(&layout, disk_guid, entries_crc, false).to_vec(),
    ));
    regions.push(bytes(2 * SECTOR, entries.clone()));

    // Boot sector, FSInfo and their copies.
    let part = layout.part_offset();
    let boot = boot_sector(&layout, volume_serial(seed), &label)?;
    let info = fs_info(to_u32(free_clusters, "free clusters")?, next_free);
    for base in [0, BACKUP_BOOT_SECTOR] {
        regions.push(bytes(part + base * SECTOR, boot.to_vec()));
        regions.push(bytes(part + (base + FSINFO_SECTOR) * SECTOR, info.to_vec()));
    }

    // Both FATs, as far as clusters are in use.
    let mut chains = Vec::new();
    for dir in &dirs {
        chains.push((to_u32(dir.first_cluster, "cluster")?, to_u32(dir.clusters, "clusters")?));
    }
    for (&first, &len) in allocation.iter().zip(&lens) {
        if first != 0 {
            chains.push((to_u32(first, "cluster")?, to_u32(layout.clusters_for(len), "clusters")?));
        }
    }
    let fat_len = 4 * (2 + used_clusters);
    for index in 0..NUM_FATS {
        regions.push(Region {
            at: layout.fat_offset(index),
            len: fat_len,
            content: Content::Fat(chains.clone()),
        });
    }

    // The directories.
    for (index, dir) in dirs.iter().enumerate() {
        let mut entries =
            Vec::with_capacity(usize::try_from(dir.entry_count(index == 0) * DIR_ENTRY_SIZE).unwrap_or(0));
        if index == 0 {
            entries.extend_from_slice(&short_entry(&label, ATTR_VOLUME_ID, 0, 0));
        } else {
            // `..` of a directory in the root names cluster 0 (FAT specification §6.1).
            let parent = if dir.parent == 0 {
                0
            } else {
                dirs[dir.parent].first_cluster
            };
            entries.extend_from_slice(&short_entry(
                b".          ",
                ATTR_DIRECTORY,
                to_u32(dir.first_cluster, "cluster")?,
                0,
            ));
            entries.extend_from_slice(&short_entry(
                b"..         ",
                ATTR_DIRECTORY,
                to_u32(parent, "cluster")?,
                0,
            ));
        }
        for (child, name) in dir.children.iter().zip(&dir.names) {
            if let Some(units) = &name.long {
                for entry in lfn_entries(units, lfn_checksum(&name.short)) {
                    entries.extend_from_slice(&entry);
                }
            }
            let entry = match child {
                Child::Dir(d) => short_entry(
                    &name.short,
                    ATTR_DIRECTORY,
                    to_u32(dirs[*d].first_cluster, "cluster")?,
                    0,
                ),
                Child::File(f) => short_entry(
                    &name.short,
                    ATTR_ARCHIVE,
                    to_u32(allocation[*f], "cluster")?,
                    to_u32(lens[*f], "file size")?,
                ),
            };
            entries.extend_from_slice(&entry);
        }
        regions.push(bytes(layout.cluster_offset(dir.first_cluster), entries));
    }

    // The files, then the backup GPT.
    for (index, (&first, &len)) in allocation.iter().zip(&lens).enumerate() {
        regions.push(Region {
            at: if first == 0 { 0 } else { layout.cluster_offset(first) },
            len,
            content: Content::File(index),
        });
    }
    let backup_entries_at = (layout.lbas - 1 - GPT_ENTRY_SECTORS) * SECTOR;
    regions.push(bytes(backup_entries_at, entries));
    regions.push(bytes(
        size - SECTOR,
        gpt_header(&layout, disk_guid, entries_crc, true).to_vec(),
    ));
    Ok(Plan { size, regions })
}

/// The payload disk's size rule: whole GiB, reserving root directory room for the longest names.
pub(super) fn payload_size(file_lens: &[u64]) -> u64 {
    const GIB: u64 = 1 << 30;
    let content = file_lens.iter().fold(2 * MIB, |acc, &len| acc.saturating_add(len));
    let mut gib = content.div_ceil(GIB).max(1);
    loop {
        let size = gib.saturating_mul(GIB);
        match Layout::for_size(size) {
            Some(layout) if !layout.fits(layout.dir_clusters(worst_dir_entries(file_lens.len())), file_lens) => {
                gib += 1;
            }
            _ => return size,
        }
    }
}

/// The ESP disk's size rule: the smallest whole number of MiB whose FAT32 volume holds the
/// directories and files as planned.
pub(super) fn esp_size(files: &[Placed<'_, '_>]) -> Result<u64, DiskError> {
    let dirs = tree(files)?;
    let lens: Vec<u64> = files.iter().map(|f| f.len).collect();
    let content = lens.iter().fold(2 * MIB, |acc, &len| acc.saturating_add(len));
    let mut mib = content.div_ceil(MIB);
    // 2 TiB: what a 32-bit sector count reaches.
    while mib <= 2 * 1024 * 1024 {
        if let Some(layout) = Layout::for_size(mib * MIB) {
            let dir_clusters = dirs
                .iter()
                .enumerate()
                .map(|(i, d)| layout.dir_clusters(d.entry_count(i == 0)))
                .sum();
            if layout.fits(dir_clusters, &lens) {
                return Ok(mib * MIB);
            }
        }
        mib += 1;
    }
    Err(invalid("the files are too large for a FAT32 volume (2 TiB at most)"))
}

/// Where emitted bytes go, in ascending offsets.
trait Sink {
    fn put(&mut self, at: u64, bytes: &[u8]) -> io::Result<()>;
}

/// A fresh file, written by seeking over zeros.
struct FileSink<'f> {
    out: &'f mut File,
    position: Option<u64>,
}

impl Sink for FileSink<'_> {
    fn put(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if self.position != Some(at) {
            self.out.seek(SeekFrom::Start(at))?;
        }
        self.out.write_all(bytes)?;
        self.position = Some(at + bytes.len() as u64);
        Ok(())
    }
}

/// SHA-256 of the whole disk, zeros included.
struct HashSink {
    hasher: Sha256,
    position: u64,
    zeros: Vec<u8>,
}

impl HashSink {
    fn zeros_to(&mut self, at: u64) -> io::Result<()> {
        if at < self.position {
            return Err(io::Error::other("disk regions overlap"));
        }
        while self.position < at {
            let n = usize::try_from(at - self.position).map_or(self.zeros.len(), |n| n.min(self.zeros.len()));
            self.hasher.update(&self.zeros[..n]);
            self.position += n as u64;
        }
        Ok(())
    }
}

impl Sink for HashSink {
    fn put(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        self.zeros_to(at)?;
        self.hasher.update(bytes);
        self.position += bytes.len() as u64;
        Ok(())
    }
}

/// Reads into `buf` until it is full or the reader ends; returns how much was read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Plan {
    /// Emits every region in order; file data is streamed through one bounded buffer and must
    /// be exactly as long as declared.
    fn emit(&self, files: &mut [Placed<'_, '_>], sink: &mut dyn Sink) -> Result<(), DiskError> {
        let mut buf = vec![0u8; COPY_BUF];
        for region in &self.regions {
            match &region.content {
                Content::Bytes(bytes) => sink.put(region.at, bytes)?,
                Content::Fat(chains) => {
                    let mut at = region.at;
                    let mut chunk = Vec::with_capacity(COPY_BUF);
                    let mut push = |entry: u32, chunk: &mut Vec<u8>, sink: &mut dyn Sink| -> io::Result<()> {
                        chunk.extend_from_slice(&entry.to_le_bytes());
                        if chunk.len() >= COPY_BUF {
                            sink.put(at, chunk)?;
                            at += chunk.len() as u64;
                            chunk.clear();
                        }
                        Ok(())
                    };
                    push(0x0FFF_FFF8, &mut chunk, sink)?;
                    push(END_OF_CHAIN, &mut chunk, sink)?;
                    for &(first, clusters) in chains {
                        for i in 0..clusters {
                            let next = if i + 1 == clusters { END_OF_CHAIN } else { first + i + 1 };
                            push(next, &mut chunk, sink)?;
                        }
                    }
                    sink.put(at, &chunk)?;
                }
                Content::File(index) => {
                    let file = &mut files[*index];
                    let mut at = region.at;
                    let mut remaining = file.len;
                    while remaining > 0 {
                        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                        let got = read_full(file.reader, &mut buf[..want])?;
                        if got < want {
                            return Err(DiskError::Short {
                                name: file.path.to_owned(),
                                got: file.len - remaining + got as u64,
                                len: file.len,
                            });
                        }
                        sink.put(at, &buf[..got])?;
                        at += got as u64;
                        remaining -= got as u64;
                    }
                    let mut probe = [0u8; 1];
                    if read_full(file.reader, &mut probe)? != 0 {
                        return Err(DiskError::Long {
                            name: file.path.to_owned(),
                            len: file.len,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the disk into `out`, a fresh, empty file: zero regions are left as holes.
    pub(super) fn write(&self, out: &mut File, files: &mut [Placed<'_, '_>]) -> Result<PayloadDisk, DiskError> {
        if out.metadata()?.len() != 0 {
            return Err(invalid("the output file is not empty"));
        }
        self.emit(files, &mut FileSink { out, position: None })?;
        out.set_len(self.size)?;
        out.flush()?;
        Ok(PayloadDisk {
            size: self.size,
            data_extents: block_extents(
                self.regions
                    .iter()
                    .filter(|r| r.len > 0)
                    .map(|r| r.at..r.at + r.len)
                    .collect(),
            ),
        })
    }

    /// SHA-256 of the disk's bytes, without writing them anywhere.
    pub(super) fn sha256(&self, files: &mut [Placed<'_, '_>]) -> Result<[u8; 32], DiskError> {
        let mut sink = HashSink {
            hasher: Sha256::new(),
            position: 0,
            zeros: vec![0u8; COPY_BUF],
        };
        self.emit(files, &mut sink)?;
        sink.zeros_to(self.size)?;
        Ok(sink.hasher.finish())
    }
}

/// `ranges` widened to [`BLOCK_SIZE`] boundaries, sorted and merged.
fn block_extents(ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut blocks: Vec<Range<u64>> = ranges
        .into_iter()
        .filter(|r| r.start < r.end)
        .map(|r| r.start / BLOCK_SIZE * BLOCK_SIZE..r.end.div_ceil(BLOCK_SIZE) * BLOCK_SIZE)
        .collect();
    blocks.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(blocks.len());
    for block in blocks {
        match merged.last_mut() {
            Some(last) if block.start <= last.end => last.end = last.end.max(block.end),
            _ => merged.push(block),
        }
    }
    merged
}
