//! Deterministic payload volumes: how the AWS backend publishes an image as an EBS snapshot.
//!
//! A payload volume is a GPT disk with exactly one partition holding one FAT32 filesystem whose
//! root directory holds a few files (the EIF, `manifest.json`, `seal-proof.json`). Every byte is
//! a function of the inputs only — the files (names, order, contents), a 32-byte seed and the
//! volume label — so anyone holding the same inputs rebuilds the disk bit for bit and can compare
//! digests. [`write_payload_disk`] writes it, [`payload_disk_size`] predicts its size from the file
//! lengths, [`read_payload_file`] reads a file back (for tests and auditors).
//!
//! # Layout
//!
//! - 512-byte sectors. The disk is the smallest whole number of GiB (at least one) that holds
//!   1 MiB of leading GPT space, the filesystem and 1 MiB of trailing GPT space.
//! - LBA 0: protective MBR, one `0xEE` partition from LBA 1 over the whole disk (the sector count
//!   capped at `0xFFFFFFFF`). LBA 1: primary GPT header; LBA 2..=33: 128 entries of 128 bytes.
//!   The last 33 sectors: the backup entries, then the backup header.
//! - Partition 1, named `safebox-payload`, type Microsoft basic data
//!   (`EBD0A0A2-B9E5-4433-87C0-68B6B72699C7`), from LBA 2048 (1 MiB) to 1 MiB before the end of
//!   the disk.
//! - FAT32 filling the partition: 32 reserved sectors (boot sector at 0, FSInfo at 1, their
//!   copies at 6 and 7), two FATs sized for every cluster of the partition (grown by a few sectors
//!   where needed so the data region is cluster-aligned on disk), then the data region. Cluster size
//!   (Microsoft's FAT32 defaults): 4 KiB for partitions up to 8 GiB, 8 KiB up to 16 GiB, 16 KiB up
//!   to 32 GiB, 32 KiB above; that keeps the cluster count valid for FAT32 (at least 65525) for
//!   every disk from 1 GiB up to the 2 TiB that a 32-bit sector count allows.
//! - The root directory starts at cluster 2 and takes as many clusters as its entries need: the
//!   volume label, then one entry per file in the given order, each preceded by VFAT long-name
//!   entries unless the name already is an upper-case 8.3 name. The files follow contiguously, in
//!   the given order; an empty file has no cluster (first cluster 0).
//!
//! # Fixed values
//!
//! - Disk GUID and partition GUID: the first 16 bytes of SHA-256(`"safebox-disk-guid"` || seed),
//!   resp. SHA-256(`"safebox-partition-guid"` || seed), read as an RFC 4122 GUID in text order,
//!   with the version 4 and RFC 4122 variant bits set; stored in GPT's mixed-endian form.
//! - Volume serial number: the first 4 bytes, little-endian, of
//!   SHA-256(`"safebox-volume-serial"` || seed).
//! - Every FAT timestamp (creation, access, write; on files and the label entry) is the DOS
//!   epoch, 1980-01-01 00:00:00. File attributes: archive. Boot sector OEM name `MSWIN4.1`,
//!   drive number `0x80`, geometry 63 sectors × 255 heads, hidden sectors 2048.
//! - Short names: a name that is already an upper-case 8.3 name is used as is, with no long-name
//!   entries. Otherwise the basis is the name upper-cased (ASCII), with leading dots, spaces and
//!   all but the last dot removed and other characters not allowed in short names replaced by
//!   `_`, cut to 8 + 3 characters. If nothing was replaced, removed or cut (only the case
//!   differs, as for `prod.eif` → `PROD.EIF`), the basis is used as is; otherwise it gets the
//!   smallest numeric tail `~N` not taken by an earlier file or by an upper-case 8.3 name
//!   (`manifest.json` → `MANIFE~1.JSO`).
//!
//! Zero regions are never written: the output file is expected fresh and empty, the writer seeks
//! over zeros and sets the final length, and [`PayloadDisk::data_extents`] says where non-zero
//! bytes may be, in [`BLOCK_SIZE`] blocks, for an uploader to the EBS direct API.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

use sha2::{Digest, Sha256};

/// The EBS direct API block size: [`PayloadDisk::data_extents`] are aligned to it.
pub const BLOCK_SIZE: u64 = 512 * 1024;

/// One file to place in the payload filesystem, in order.
pub struct PayloadFile<'a> {
    /// The file name, e.g. `prod.eif`, `manifest.json`, `seal-proof.json`. Names that are not
    /// upper-case 8.3 names get VFAT long-name entries. Rejected: empty names, names longer than
    /// 255 UTF-16 units, names containing `/`, `\`, `"`, `*`, `:`, `<`, `>`, `?`, `|` or control
    /// characters, `.` and `..`, names ending in a dot or a space, and names equal to an earlier
    /// one ignoring case.
    pub name: &'a str,
    /// The exact length in bytes, at most 4 GiB − 1 (the FAT32 limit). `reader` must yield
    /// exactly this many bytes. (dosfstools 4.2's `fsck.fat` wrongly flags files whose cluster
    /// chain adds up to exactly 4 GiB, i.e. within one cluster of the limit; mtools reads them.)
    pub len: u64,
    /// The file's content.
    pub reader: &'a mut dyn Read,
}

/// What [`write_payload_disk`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadDisk {
    /// The total disk size in bytes: a whole number of GiB (EBS volumes are sized in GiB), at
    /// least 1 GiB. Equal to [`payload_disk_size`] of the file lengths.
    pub size: u64,
    /// Sorted, non-overlapping, non-adjacent byte ranges, aligned to [`BLOCK_SIZE`], that may hold
    /// non-zero bytes; every byte outside them is zero.
    pub data_extents: Vec<Range<u64>>,
}

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The first sector of the partition (1 MiB); the partition also ends 1 MiB before the disk end.
const PART_FIRST_LBA: u64 = 2048;
const GPT_ENTRY_COUNT: usize = 128;
const GPT_ENTRY_SIZE: usize = 128;
/// Sectors of the GPT entry array (128 × 128 bytes).
const GPT_ENTRY_SECTORS: u64 = 32;
const RESERVED_SECTORS: u64 = 32;
const NUM_FATS: u64 = 2;
const FSINFO_SECTOR: u64 = 1;
const BACKUP_BOOT_SECTOR: u64 = 6;
const MIN_CLUSTERS: u64 = 65_525;
const MAX_CLUSTERS: u64 = 0x0FFF_FFF5;
const FAT_ENTRY_MASK: u32 = 0x0FFF_FFFF;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
const MIN_END_OF_CHAIN: u32 = 0x0FFF_FFF8;
const ROOT_CLUSTER: u32 = 2;
const DIR_ENTRY_SIZE: u64 = 32;
/// FAT caps a directory at 65536 entries (2 MiB).
const MAX_DIR_ENTRIES: u64 = 65_536;
const MAX_NAME_UNITS: usize = 255;
const LFN_CHARS: usize = 13;
/// Where the 13 UTF-16 units of a long-name entry sit.
const LFN_OFFSETS: [usize; LFN_CHARS] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// Long-name entries per file at most (255 units / 13).
const MAX_LFN_ENTRIES: u64 = 20;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0F;
/// The FAT32 file size limit.
const MAX_FILE_LEN: u64 = 0xFFFF_FFFF;
/// The bounded buffer file data is streamed through.
const COPY_BUF: usize = 1 << 20;
/// DOS date 1980-01-01 (year 0 since 1980, month 1, day 1) and time 00:00:00.
const FAT_DATE: u16 = (1 << 5) | 1;
const FAT_TIME: u16 = 0;
const PARTITION_NAME: &str = "safebox-payload";
/// Microsoft basic data, `EBD0A0A2-B9E5-4433-87C0-68B6B72699C7`, in text order.
const BASIC_DATA_TYPE: [u8; 16] = [
    0xEB, 0xD0, 0xA0, 0xA2, 0xB9, 0xE5, 0x44, 0x33, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
];
/// Characters a short name may hold besides upper-case letters and digits.
const SHORT_NAME_SPECIALS: &[u8] = b"!#$%&'()-@^_`{}~";

fn invalid_input(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("payload disk: {}", msg.into()))
}

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("payload disk: {}", msg.into()))
}

fn to_u32(value: u64, what: &str) -> io::Result<u32> {
    u32::try_from(value).map_err(|_| invalid_input(format!("{what} {value} does not fit in 32 bits")))
}

fn to_u16(value: u64, what: &str) -> io::Result<u16> {
    u16::try_from(value).map_err(|_| invalid_input(format!("{what} {value} does not fit in 16 bits")))
}

/// The geometry of a disk of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Disk size in bytes.
    size: u64,
    /// Disk size in sectors.
    lbas: u64,
    /// Partition (and filesystem) size in sectors.
    part_sectors: u64,
    sectors_per_cluster: u64,
    /// Sectors of one FAT.
    fat_sectors: u64,
    /// Data clusters, numbered 2..cluster_count + 2.
    cluster_count: u64,
}

impl Layout {
    /// The layout of a disk of `size` bytes, or `None` if no valid FAT32 volume fills it.
    fn for_size(size: u64) -> Option<Self> {
        // (Masks rather than `is_multiple_of`, which needs Rust 1.87; both divisors are powers of two.)
        if size < GIB || size & (GIB - 1) != 0 {
            return None;
        }
        let lbas = size / SECTOR;
        let part_sectors = lbas.checked_sub(2 * PART_FIRST_LBA)?;
        if part_sectors > u64::from(u32::MAX) {
            return None;
        }
        let part_bytes = part_sectors * SECTOR;
        let sectors_per_cluster = match part_bytes {
            b if b <= 8 * GIB => 8,
            b if b <= 16 * GIB => 16,
            b if b <= 32 * GIB => 32,
            _ => 64,
        };
        // Size the FAT for the most clusters the partition could have, then grow it until the
        // data region starts cluster-aligned (the partition itself is 1 MiB aligned).
        let most_clusters = part_sectors.checked_sub(RESERVED_SECTORS)? / sectors_per_cluster;
        let mut fat_sectors = ((most_clusters + 2) * 4).div_ceil(SECTOR);
        while (RESERVED_SECTORS + NUM_FATS * fat_sectors) & (sectors_per_cluster - 1) != 0 {
            fat_sectors += 1;
        }
        let data_sectors = part_sectors.checked_sub(RESERVED_SECTORS + NUM_FATS * fat_sectors)?;
        let cluster_count = data_sectors / sectors_per_cluster;
        if !(MIN_CLUSTERS..=MAX_CLUSTERS).contains(&cluster_count) {
            return None;
        }
        Some(Self {
            size,
            lbas,
            part_sectors,
            sectors_per_cluster,
            fat_sectors,
            cluster_count,
        })
    }

    fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }

    fn part_offset(&self) -> u64 {
        PART_FIRST_LBA * SECTOR
    }

    fn part_last_lba(&self) -> u64 {
        PART_FIRST_LBA + self.part_sectors - 1
    }

    fn fat_offset(&self, index: u64) -> u64 {
        self.part_offset() + (RESERVED_SECTORS + index * self.fat_sectors) * SECTOR
    }

    fn cluster_offset(&self, cluster: u64) -> u64 {
        self.fat_offset(NUM_FATS) + (cluster - 2) * self.cluster_bytes()
    }

    fn clusters_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.cluster_bytes())
    }

    fn root_clusters(&self, dir_entries: u64) -> u64 {
        self.clusters_for(dir_entries.saturating_mul(DIR_ENTRY_SIZE)).max(1)
    }

    /// Whether a root directory of `dir_entries` entries and files of `lens` fit.
    fn fits(&self, dir_entries: u64, lens: &[u64]) -> bool {
        lens.iter()
            .try_fold(self.root_clusters(dir_entries), |acc, &len| {
                acc.checked_add(self.clusters_for(len))
            })
            .is_some_and(|clusters| clusters <= self.cluster_count)
    }
}

/// The most root directory entries `files` files can take: the label plus, per file, the
/// longest possible long name and the short entry.
fn worst_dir_entries(files: usize) -> u64 {
    (files as u64).saturating_mul(MAX_LFN_ENTRIES + 1).saturating_add(1)
}

/// The size the disk for files of these lengths will have, so callers can size the EBS
/// snapshot before writing: the smallest whole number of GiB (at least 1) whose FAT32 volume
/// holds the files, reserving root directory room for the longest names.
///
/// If no FAT32 payload volume can hold the files (more than 2 TiB), the result exceeds
/// the largest supported size and [`write_payload_disk`] rejects those files.
#[must_use]
pub fn payload_disk_size(file_lens: &[u64]) -> u64 {
    let dir_entries = worst_dir_entries(file_lens.len());
    let content = file_lens.iter().fold(2 * MIB, |acc, &len| acc.saturating_add(len));
    let mut gib = content.div_ceil(GIB).max(1);
    loop {
        let size = gib.saturating_mul(GIB);
        match Layout::for_size(size) {
            Some(layout) if !layout.fits(dir_entries, file_lens) => gib += 1,
            _ => return size,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names

fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_NAME_SPECIALS.contains(&b)
}

/// The 11-byte label, space padded, or why `label` is not one.
fn volume_label(label: &str) -> io::Result<[u8; 11]> {
    if label.is_empty() || label.len() > 11 {
        return Err(invalid_input(format!(
            "volume label {label:?} must be 1 to 11 characters"
        )));
    }
    if label.starts_with(' ') {
        return Err(invalid_input(format!(
            "volume label {label:?} must not start with a space"
        )));
    }
    if let Some(c) = label
        .chars()
        .find(|&c| !(c == ' ' || (c.is_ascii() && is_short_char(c as u8))))
    {
        return Err(invalid_input(format!(
            "volume label {label:?}: {c:?} is not allowed (upper-case ASCII letters, digits, spaces and !#$%&'()-@^_`{{}}~)"
        )));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() {
        return Err(invalid_input("a file name is empty"));
    }
    if name.encode_utf16().count() > MAX_NAME_UNITS {
        return Err(invalid_input(format!(
            "file name {name:?} is longer than {MAX_NAME_UNITS} UTF-16 units"
        )));
    }
    if let Some(c) = name.chars().find(|&c| c.is_control() || "/\\\"*:<>?|".contains(c)) {
        return Err(invalid_input(format!("file name {name:?} contains {c:?}")));
    }
    if name == "." || name == ".." || name.ends_with('.') || name.ends_with(' ') {
        return Err(invalid_input(format!(
            "file name {name:?} must not be `.`, `..` or end in a dot or space"
        )));
    }
    Ok(())
}

/// How a file appears in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirName {
    /// The 8.3 name, space padded, as stored.
    short: [u8; 11],
    /// The long name, if the name is not its short name.
    long: Option<Vec<u16>>,
}

impl DirName {
    fn entry_count(&self) -> u64 {
        1 + self
            .long
            .as_ref()
            .map_or(0, |units| units.len().div_ceil(LFN_CHARS) as u64)
    }
}

fn pack_short(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut out = [b' '; 11];
    for (slot, &b) in out[..8].iter_mut().zip(base) {
        *slot = b;
    }
    for (slot, &b) in out[8..].iter_mut().zip(ext) {
        *slot = b;
    }
    out
}

/// The short name of `name` if it already is an upper-case 8.3 name.
fn exact_short(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((base, ext)) => (base, ext),
        None => (name, ""),
    };
    let ok = (1..=8).contains(&base.len())
        && ext.len() <= 3
        && ext.is_empty() != name.contains('.')
        && base.bytes().chain(ext.bytes()).all(is_short_char);
    ok.then(|| pack_short(base.as_bytes(), ext.as_bytes()))
}

/// The short name basis of `name`: base, extension, and whether anything but the case changed.
fn short_basis(name: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let trimmed = name.trim_start_matches('.');
    let mut lossy = trimmed.len() != name.len();
    let (base_part, ext_part) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let mut convert = |part: &str| {
        let mut out = Vec::new();
        for c in part.chars() {
            if c == ' ' || c == '.' {
                lossy = true;
                continue;
            }
            let upper = c.to_ascii_uppercase();
            if upper.is_ascii() && is_short_char(upper as u8) {
                out.push(upper as u8);
            } else {
                out.push(b'_');
                lossy = true;
            }
        }
        out
    };
    let mut base = convert(base_part);
    let mut ext = convert(ext_part);
    if base.len() > 8 {
        base.truncate(8);
        lossy = true;
    }
    if ext.len() > 3 {
        ext.truncate(3);
        lossy = true;
    }
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }
    (base, ext, lossy)
}

/// The short names (and long names where needed) of `names`, in order.
fn plan_names(names: &[&str]) -> io::Result<Vec<DirName>> {
    let mut seen = HashSet::new();
    for name in names {
        check_name(name)?;
        if !seen.insert(name.to_uppercase()) {
            return Err(invalid_input(format!(
                "file name {name:?} appears twice (ignoring case)"
            )));
        }
    }
    let mut used: HashSet<[u8; 11]> = names.iter().filter_map(|name| exact_short(name)).collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(short) = exact_short(name) {
            out.push(DirName { short, long: None });
            continue;
        }
        let (base, ext, lossy) = short_basis(name);
        let plain = pack_short(&base, &ext);
        let short = if !lossy && !used.contains(&plain) {
            plain
        } else {
            (1..=999_999u32)
                .map(|n| {
                    let tail = format!("~{n}");
                    let keep = base.len().min(8 - tail.len());
                    let mut tailed = base[..keep].to_vec();
                    tailed.extend_from_slice(tail.as_bytes());
                    pack_short(&tailed, &ext)
                })
                .find(|candidate| !used.contains(candidate))
                .ok_or_else(|| invalid_input(format!("no free short name for {name:?}")))?
        };
        used.insert(short);
        out.push(DirName {
            short,
            long: Some(name.encode_utf16().collect()),
        });
    }
    Ok(out)
}

/// The VFAT checksum of a short name, stored in each of its long-name entries.
fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

fn short_entry(name: &[u8; 11], attr: u8, first_cluster: u32, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&FAT_TIME.to_le_bytes());
    e[16..18].copy_from_slice(&FAT_DATE.to_le_bytes());
    e[18..20].copy_from_slice(&FAT_DATE.to_le_bytes());
    e[20..22].copy_from_slice(&((first_cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&FAT_TIME.to_le_bytes());
    e[24..26].copy_from_slice(&FAT_DATE.to_le_bytes());
    e[26..28].copy_from_slice(&((first_cluster & 0xFFFF) as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// The long-name entries for `units`, in on-disk order (last part first).
fn lfn_entries(units: &[u16], checksum: u8) -> Vec<[u8; 32]> {
    let count = units.len().div_ceil(LFN_CHARS);
    let mut padded = units.to_vec();
    if padded.len() < count * LFN_CHARS {
        padded.push(0);
    }
    padded.resize(count * LFN_CHARS, 0xFFFF);
    (1..=count)
        .rev()
        .map(|ord| {
            let mut e = [0u8; 32];
            // ord <= 20: names are at most 255 units.
            e[0] = ord as u8 | if ord == count { 0x40 } else { 0 };
            e[11] = ATTR_LONG_NAME;
            e[13] = checksum;
            let part = &padded[(ord - 1) * LFN_CHARS..ord * LFN_CHARS];
            for (&at, unit) in LFN_OFFSETS.iter().zip(part) {
                e[at..at + 2].copy_from_slice(&unit.to_le_bytes());
            }
            e
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// GPT and FAT32 structures

/// A GUID derived from the seed: RFC 4122 text-order bytes, version 4, RFC 4122 variant.
fn derive_guid(domain: &str, seed: &[u8; 32]) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(domain.as_bytes())
        .chain_update(seed)
        .finalize();
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&digest[..16]);
    guid[6] = (guid[6] & 0x0F) | 0x40;
    guid[8] = (guid[8] & 0x3F) | 0x80;
    guid
}

/// A text-order GUID in GPT's mixed-endian form (the first three fields little-endian).
fn gpt_guid(text_order: [u8; 16]) -> [u8; 16] {
    let mut guid = text_order;
    guid[0..4].reverse();
    guid[4..6].reverse();
    guid[6..8].reverse();
    guid
}

fn volume_serial(seed: &[u8; 32]) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"safebox-volume-serial")
        .chain_update(seed)
        .finalize();
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn protective_mbr(layout: &Layout) -> [u8; 512] {
    let mut s = [0u8; 512];
    let sectors = u32::try_from(layout.lbas - 1).unwrap_or(u32::MAX);
    // Status 0, start CHS 0/0/2, type 0xEE, end CHS all ones, from LBA 1.
    s[446..462].copy_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0, 0, 0, 0]);
    s[458..462].copy_from_slice(&sectors.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

fn gpt_entries(layout: &Layout, part_guid: [u8; 16]) -> Vec<u8> {
    let mut table = vec![0u8; GPT_ENTRY_COUNT * GPT_ENTRY_SIZE];
    table[0..16].copy_from_slice(&gpt_guid(BASIC_DATA_TYPE));
    table[16..32].copy_from_slice(&gpt_guid(part_guid));
    table[32..40].copy_from_slice(&PART_FIRST_LBA.to_le_bytes());
    table[40..48].copy_from_slice(&layout.part_last_lba().to_le_bytes());
    for (slot, unit) in table[56..128].chunks_exact_mut(2).zip(PARTITION_NAME.encode_utf16()) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    table
}

fn gpt_header(layout: &Layout, disk_guid: [u8; 16], entries_crc: u32, backup: bool) -> [u8; 512] {
    let last = layout.lbas - 1;
    let (mine, alternate, entries_lba) = if backup {
        (last, 1, last - GPT_ENTRY_SECTORS)
    } else {
        (1, last, 2)
    };
    let mut s = [0u8; 512];
    s[0..8].copy_from_slice(b"EFI PART");
    s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    s[12..16].copy_from_slice(&92u32.to_le_bytes());
    s[24..32].copy_from_slice(&mine.to_le_bytes());
    s[32..40].copy_from_slice(&alternate.to_le_bytes());
    s[40..48].copy_from_slice(&(2 + GPT_ENTRY_SECTORS).to_le_bytes());
    s[48..56].copy_from_slice(&(last - 1 - GPT_ENTRY_SECTORS).to_le_bytes());
    s[56..72].copy_from_slice(&gpt_guid(disk_guid));
    s[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    s[80..84].copy_from_slice(&(GPT_ENTRY_COUNT as u32).to_le_bytes());
    s[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
    s[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&s[..92]);
    s[16..20].copy_from_slice(&crc.to_le_bytes());
    s
}

fn boot_sector(layout: &Layout, serial: u32, label: &[u8; 11]) -> io::Result<[u8; 512]> {
    let mut s = [0u8; 512];
    s[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    s[3..11].copy_from_slice(b"MSWIN4.1");
    s[11..13].copy_from_slice(&512u16.to_le_bytes());
    s[13] = u8::try_from(layout.sectors_per_cluster).map_err(|_| invalid_input("cluster size out of range"))?;
    s[14..16].copy_from_slice(&to_u16(RESERVED_SECTORS, "reserved sectors")?.to_le_bytes());
    s[16] = NUM_FATS as u8;
    // Root entry count, 16-bit total sectors: 0 on FAT32.
    s[21] = 0xF8;
    // 16-bit FAT size: 0 on FAT32.
    s[24..26].copy_from_slice(&63u16.to_le_bytes());
    s[26..28].copy_from_slice(&255u16.to_le_bytes());
    s[28..32].copy_from_slice(&to_u32(PART_FIRST_LBA, "hidden sectors")?.to_le_bytes());
    s[32..36].copy_from_slice(&to_u32(layout.part_sectors, "filesystem sectors")?.to_le_bytes());
    s[36..40].copy_from_slice(&to_u32(layout.fat_sectors, "FAT sectors")?.to_le_bytes());
    // Extended flags 0 (FATs mirrored), version 0.0.
    s[44..48].copy_from_slice(&ROOT_CLUSTER.to_le_bytes());
    s[48..50].copy_from_slice(&to_u16(FSINFO_SECTOR, "FSInfo sector")?.to_le_bytes());
    s[50..52].copy_from_slice(&to_u16(BACKUP_BOOT_SECTOR, "backup boot sector")?.to_le_bytes());
    s[64] = 0x80;
    s[66] = 0x29;
    s[67..71].copy_from_slice(&serial.to_le_bytes());
    s[71..82].copy_from_slice(label);
    s[82..90].copy_from_slice(b"FAT32   ");
    // Boot code: `int 0x18` (no bootable disk), then `jmp $`.
    s[90..94].copy_from_slice(&[0xCD, 0x18, 0xEB, 0xFE]);
    s[510] = 0x55;
    s[511] = 0xAA;
    Ok(s)
}

fn fs_info(free_clusters: u32, next_free: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free_clusters.to_le_bytes());
    s[492..496].copy_from_slice(&next_free.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

// ---------------------------------------------------------------------------------------------
// Writing

fn write_at(out: &mut File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    out.seek(SeekFrom::Start(offset))?;
    out.write_all(bytes)
}

/// Streams FAT entries to both FATs at once through a bounded buffer.
struct FatWriter<'f> {
    out: &'f mut File,
    offsets: [u64; 2],
    buf: Vec<u8>,
    written: u64,
}

impl FatWriter<'_> {
    fn push(&mut self, entry: u32) -> io::Result<()> {
        self.buf.extend_from_slice(&entry.to_le_bytes());
        if self.buf.len() >= COPY_BUF {
            self.flush()?;
        }
        Ok(())
    }

    fn chain(&mut self, first: u32, clusters: u32) -> io::Result<()> {
        for i in 0..clusters {
            let cluster = first + i;
            self.push(if i + 1 == clusters { END_OF_CHAIN } else { cluster + 1 })?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        for offset in self.offsets {
            write_at(self.out, offset + self.written, &self.buf)?;
        }
        self.written += self.buf.len() as u64;
        self.buf.clear();
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

/// Copies exactly `file.len` bytes of `file.reader` to `offset`, and checks the reader ends there.
fn copy_file(out: &mut File, offset: u64, file: &mut PayloadFile<'_>, buf: &mut [u8]) -> io::Result<()> {
    out.seek(SeekFrom::Start(offset))?;
    let mut remaining = file.len;
    while remaining > 0 {
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let got = read_full(file.reader, &mut buf[..want])?;
        if got < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "payload disk: {:?} ended after {} of its {} bytes",
                    file.name,
                    file.len - remaining + got as u64,
                    file.len
                ),
            ));
        }
        out.write_all(&buf[..got])?;
        remaining -= got as u64;
    }
    let mut probe = [0u8; 1];
    if read_full(file.reader, &mut probe)? != 0 {
        return Err(invalid_data(format!(
            "{:?} has more than its declared {} bytes",
            file.name, file.len
        )));
    }
    Ok(())
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

/// Writes the payload disk for `files` to `out`, which must be a fresh, empty file (not opened
/// for appending): zero regions are left as holes (seeked over; the final length is set with
/// `set_len`), so a 1 GiB disk holding a few MB costs a few MB of writes. File data is streamed
/// through a 1 MiB buffer. The module documentation gives the exact layout.
///
/// `seed` fixes the disk and partition GUIDs and the volume serial number; `label` is the
/// volume label: 1 to 11 upper-case ASCII letters, digits, spaces (not first) or
/// ``!#$%&'()-@^_`{}~``.
///
/// # Errors
/// `InvalidInput` for a bad label, a bad or duplicate file name, a file over 4 GiB − 1, files
/// too large for a FAT32 payload volume, or a non-empty `out` (all checked before anything is
/// written); `UnexpectedEof` or `InvalidData` if a reader yields fewer or more bytes than its
/// `len`; and what reading or writing returns. After an error `out` holds a partial disk and
/// should be discarded.
pub fn write_payload_disk(
    out: &mut File,
    seed: &[u8; 32],
    label: &str,
    files: &mut [PayloadFile<'_>],
) -> io::Result<PayloadDisk> {
    let lens: Vec<u64> = files.iter().map(|f| f.len).collect();
    write_disk(out, seed, label, files, payload_disk_size(&lens))
}

/// [`write_payload_disk`] with the disk size given (tests use it to reach larger cluster sizes).
fn write_disk(
    out: &mut File,
    seed: &[u8; 32],
    label: &str,
    files: &mut [PayloadFile<'_>],
    size: u64,
) -> io::Result<PayloadDisk> {
    let label = volume_label(label)?;
    let names: Vec<&str> = files.iter().map(|f| f.name).collect();
    let dir_names = plan_names(&names)?;
    if let Some(file) = files.iter().find(|f| f.len > MAX_FILE_LEN) {
        return Err(invalid_input(format!(
            "{:?} has {} bytes; FAT32 files hold at most {MAX_FILE_LEN}",
            file.name, file.len
        )));
    }
    let lens: Vec<u64> = files.iter().map(|f| f.len).collect();
    let layout = Layout::for_size(size)
        .filter(|layout| layout.fits(worst_dir_entries(lens.len()), &lens))
        .ok_or_else(|| invalid_input("the files are too large for a FAT32 payload volume (2 TiB at most)"))?;
    let dir_entries = 1 + dir_names.iter().map(DirName::entry_count).sum::<u64>();
    if dir_entries > MAX_DIR_ENTRIES {
        return Err(invalid_input(format!(
            "the root directory would need {dir_entries} entries; FAT allows {MAX_DIR_ENTRIES}"
        )));
    }
    if out.metadata()?.len() != 0 {
        return Err(invalid_input("the output file is not empty"));
    }

    // Allocation: the root directory from cluster 2, then each file in order.
    let root_clusters = layout.root_clusters(dir_entries);
    let mut next_cluster = u64::from(ROOT_CLUSTER) + root_clusters;
    let mut allocation = Vec::with_capacity(files.len());
    for &len in &lens {
        let clusters = layout.clusters_for(len);
        allocation.push(if clusters == 0 { 0 } else { next_cluster });
        next_cluster += clusters;
    }
    let used_clusters = next_cluster - u64::from(ROOT_CLUSTER);
    if used_clusters > layout.cluster_count {
        return Err(invalid_input("the files do not fit the payload volume"));
    }
    let free_clusters = layout.cluster_count - used_clusters;
    let next_free = if free_clusters == 0 {
        u32::MAX
    } else {
        to_u32(next_cluster, "cluster")?
    };

    let mut extents = Vec::new();

    // Protective MBR, GPT, backup GPT.
    let entries = gpt_entries(&layout, derive_guid("safebox-partition-guid", seed));
    let entries_crc = crc32fast::hash(&entries);
    let disk_guid = derive_guid("safebox-disk-guid", seed);
    let backup_entries_at = (layout.lbas - 1 - GPT_ENTRY_SECTORS) * SECTOR;
    write_at(out, 0, &protective_mbr(&layout))?;
    write_at(out, SECTOR, &gpt_header(&layout, disk_guid, entries_crc, false))?;
    write_at(out, 2 * SECTOR, &entries)?;
    write_at(out, backup_entries_at, &entries)?;
    write_at(out, size - SECTOR, &gpt_header(&layout, disk_guid, entries_crc, true))?;
    extents.push(0..(2 + GPT_ENTRY_SECTORS) * SECTOR);
    extents.push(backup_entries_at..size);

    // Boot sector, FSInfo and their copies.
    let part = layout.part_offset();
    let boot = boot_sector(&layout, volume_serial(seed), &label)?;
    let info = fs_info(to_u32(free_clusters, "free clusters")?, next_free);
    for base in [0, BACKUP_BOOT_SECTOR] {
        write_at(out, part + base * SECTOR, &boot)?;
        write_at(out, part + (base + FSINFO_SECTOR) * SECTOR, &info)?;
    }
    extents.push(part..part + (BACKUP_BOOT_SECTOR + 2) * SECTOR);

    // Both FATs, as far as clusters are in use.
    let mut fat = FatWriter {
        out,
        offsets: [layout.fat_offset(0), layout.fat_offset(1)],
        buf: Vec::with_capacity(COPY_BUF),
        written: 0,
    };
    fat.push(0x0FFF_FFF8)?;
    fat.push(END_OF_CHAIN)?;
    fat.chain(ROOT_CLUSTER, to_u32(root_clusters, "root directory clusters")?)?;
    for (&first, &len) in allocation.iter().zip(&lens) {
        if first != 0 {
            fat.chain(to_u32(first, "cluster")?, to_u32(layout.clusters_for(len), "clusters")?)?;
        }
    }
    fat.flush()?;
    let fat_bytes = fat.written;
    for index in 0..NUM_FATS {
        let at = layout.fat_offset(index);
        extents.push(at..at + fat_bytes);
    }

    // The root directory.
    let mut dir = Vec::with_capacity(usize::try_from(dir_entries * DIR_ENTRY_SIZE).unwrap_or(0));
    dir.extend_from_slice(&short_entry(&label, ATTR_VOLUME_ID, 0, 0));
    for ((name, &first), &len) in dir_names.iter().zip(&allocation).zip(&lens) {
        if let Some(units) = &name.long {
            for entry in lfn_entries(units, lfn_checksum(&name.short)) {
                dir.extend_from_slice(&entry);
            }
        }
        dir.extend_from_slice(&short_entry(
            &name.short,
            ATTR_ARCHIVE,
            to_u32(first, "cluster")?,
            to_u32(len, "file size")?,
        ));
    }
    let root_at = layout.cluster_offset(u64::from(ROOT_CLUSTER));
    write_at(out, root_at, &dir)?;
    extents.push(root_at..root_at + dir.len() as u64);

    // The files.
    let mut buf = vec![0u8; COPY_BUF];
    for (file, &first) in files.iter_mut().zip(&allocation) {
        if first == 0 {
            copy_file(out, 0, file, &mut buf)?;
            continue;
        }
        let at = layout.cluster_offset(first);
        copy_file(out, at, file, &mut buf)?;
        extents.push(at..at + file.len);
    }

    out.set_len(size)?;
    out.flush()?;
    Ok(PayloadDisk {
        size,
        data_extents: block_extents(extents),
    })
}

// ---------------------------------------------------------------------------------------------
// Reading

fn read_at<D: Read + Seek>(disk: &mut D, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    disk.seek(SeekFrom::Start(offset))?;
    disk.read_exact(buf)
}

fn le16(b: &[u8; 512], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8; 512], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn le64(b: &[u8; 512], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Where a FAT32 volume keeps what.
struct Volume {
    fat: u64,
    data: u64,
    cluster_bytes: u64,
    cluster_count: u64,
}

impl Volume {
    /// Reads the chain from `first`: exactly `len` bytes if `exact`, else whole clusters up to
    /// the end of the chain or `len` bytes.
    fn read_chain<D: Read + Seek>(&self, disk: &mut D, first: u32, len: u64, exact: bool) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut cluster = first;
        let mut steps = 0u64;
        while (out.len() as u64) < len {
            if cluster < 2 || u64::from(cluster) >= self.cluster_count + 2 {
                return Err(invalid_data(format!("cluster {cluster:#x} in a chain is out of range")));
            }
            steps += 1;
            if steps > self.cluster_count {
                return Err(invalid_data("a cluster chain loops"));
            }
            let start = out.len();
            let take = self.cluster_bytes.min(len - start as u64);
            out.resize(
                start + usize::try_from(take).map_err(|_| invalid_data("cluster too large"))?,
                0,
            );
            read_at(
                disk,
                self.data + u64::from(cluster - 2) * self.cluster_bytes,
                &mut out[start..],
            )?;
            if (out.len() as u64) < len {
                let mut entry = [0u8; 4];
                read_at(disk, self.fat + u64::from(cluster) * 4, &mut entry)?;
                let next = u32::from_le_bytes(entry) & FAT_ENTRY_MASK;
                if next >= MIN_END_OF_CHAIN {
                    if exact {
                        return Err(invalid_data("a file's cluster chain is shorter than its size"));
                    }
                    break;
                }
                cluster = next;
            }
        }
        Ok(out)
    }
}

/// The long name that `entries` (long-name entries in on-disk order) give the short entry
/// `short`, if they are complete and their checksums match.
fn long_name(entries: &[[u8; 32]], short: &[u8; 11]) -> Option<String> {
    let count = entries.len();
    if count == 0 || count as u64 > MAX_LFN_ENTRIES {
        return None;
    }
    let checksum = lfn_checksum(short);
    for (i, e) in entries.iter().enumerate() {
        let ord = (count - i) as u8 | if i == 0 { 0x40 } else { 0 };
        if e[0] != ord || e[13] != checksum {
            return None;
        }
    }
    let mut units: Vec<u16> = entries
        .iter()
        .rev()
        .flat_map(|e| {
            LFN_OFFSETS
                .iter()
                .map(move |&at| u16::from_le_bytes([e[at], e[at + 1]]))
        })
        .collect();
    if let Some(end) = units.iter().position(|&u| u == 0) {
        units.truncate(end);
    }
    String::from_utf16(&units).ok()
}

/// `BASE.EXT` of a short entry.
fn short_display(short: &[u8; 11]) -> String {
    let mut base = short[..8].to_vec();
    if base.first() == Some(&0x05) {
        base[0] = 0xE5;
    }
    let base = String::from_utf8_lossy(&base).trim_end_matches(' ').to_owned();
    let ext = String::from_utf8_lossy(&short[8..]).trim_end_matches(' ').to_owned();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Reads the file `name` (its long or its short name, ignoring case) from the root directory of
/// the FAT32 filesystem in the first GPT partition of `disk`, following its cluster chain. For
/// tests and auditors; it reads the structures [`write_payload_disk`] writes, not every FAT32
/// variant (512-byte sectors only).
///
/// # Errors
/// `NotFound` if there is no such file; `InvalidData` if the disk is not such a disk or its
/// structures are inconsistent; and what reading returns.
pub fn read_payload_file(disk: &mut (impl Read + Seek), name: &str) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 512];
    read_at(disk, SECTOR, &mut header)?;
    if &header[..8] != b"EFI PART" {
        return Err(invalid_data("no GPT header at LBA 1"));
    }
    let entries_at = le64(&header, 72)
        .checked_mul(SECTOR)
        .ok_or_else(|| invalid_data("GPT entries LBA out of range"))?;
    let mut entry = [0u8; 512];
    read_at(disk, entries_at, &mut entry)?;
    if entry[..16].iter().all(|&b| b == 0) {
        return Err(invalid_data("the first GPT partition entry is unused"));
    }
    // Bounding the partition start keeps every offset computed below far from overflowing.
    let part = le64(&entry, 32)
        .checked_mul(SECTOR)
        .filter(|&part| part < 1 << 50)
        .ok_or_else(|| invalid_data("partition start out of range"))?;

    let mut boot = [0u8; 512];
    read_at(disk, part, &mut boot)?;
    let sectors_per_cluster = u64::from(boot[13]);
    let reserved = le16(&boot, 14);
    let fats = u64::from(boot[16]);
    let fat_sectors = le32(&boot, 36);
    let total = le32(&boot, 32);
    let root = u32::from_le_bytes([boot[44], boot[45], boot[46], boot[47]]);
    if boot[510..] != [0x55, 0xAA]
        || le16(&boot, 11) != SECTOR
        || !sectors_per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
        || fat_sectors == 0
        || le16(&boot, 22) != 0
    {
        return Err(invalid_data(
            "the partition does not hold a FAT32 filesystem with 512-byte sectors",
        ));
    }
    let data_sectors = total
        .checked_sub(reserved + fats * fat_sectors)
        .ok_or_else(|| invalid_data("the FAT32 boot sector's sizes are inconsistent"))?;
    let volume = Volume {
        fat: part + reserved * SECTOR,
        data: part + (reserved + fats * fat_sectors) * SECTOR,
        cluster_bytes: sectors_per_cluster * SECTOR,
        // Clusters beyond what the FAT can describe do not exist.
        cluster_count: (data_sectors / sectors_per_cluster).min((fat_sectors * SECTOR / 4).saturating_sub(2)),
    };

    let dir = volume.read_chain(disk, root, MAX_DIR_ENTRIES * DIR_ENTRY_SIZE, false)?;
    let wanted = name.to_uppercase();
    let mut pending: Vec<[u8; 32]> = Vec::new();
    for raw in dir.chunks_exact(32) {
        let mut e = [0u8; 32];
        e.copy_from_slice(raw);
        match e[0] {
            0x00 => break,
            0xE5 => {
                pending.clear();
                continue;
            }
            _ => {}
        }
        if e[11] & 0x3F == ATTR_LONG_NAME {
            pending.push(e);
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        let long = long_name(&pending, &short);
        pending.clear();
        if e[11] & (ATTR_VOLUME_ID | ATTR_DIRECTORY) != 0 {
            continue;
        }
        let matches =
            long.is_some_and(|long| long.to_uppercase() == wanted) || short_display(&short).to_uppercase() == wanted;
        if matches {
            let first = u32::from_le_bytes([e[26], e[27], e[20], e[21]]);
            let size = u64::from(u32::from_le_bytes([e[28], e[29], e[30], e[31]]));
            return volume.read_chain(disk, first, size, true);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("payload disk: no file {name:?} in the root directory"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const SEED: [u8; 32] = [7; 32];

    /// Deterministic test content.
    fn content(len: usize, salt: u8) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(salt);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            // Larger than one 512 KiB block and not a multiple of the cluster size.
            ("prod.eif", content(1_300_001, 1)),
            ("manifest.json", b"{\"image\":\"prod\"}\n".to_vec()),
            ("empty.txt", Vec::new()),
            ("seal-proof.json", content(5000, 2)),
            ("README.TXT", content(4096, 3)),
            (
                "a name that is rather long, with spaces and ünicode.bin",
                content(10, 4),
            ),
        ]
    }

    fn write(
        seed: &[u8; 32],
        label: &str,
        specs: &[(&str, Vec<u8>)],
    ) -> io::Result<(tempfile::NamedTempFile, PayloadDisk)> {
        let lens: Vec<u64> = specs.iter().map(|(_, data)| data.len() as u64).collect();
        write_sized(seed, label, specs, payload_disk_size(&lens))
    }

    fn write_sized(
        seed: &[u8; 32],
        label: &str,
        specs: &[(&str, Vec<u8>)],
        size: u64,
    ) -> io::Result<(tempfile::NamedTempFile, PayloadDisk)> {
        let mut tmp = tempfile::NamedTempFile::new()?;
        let mut readers: Vec<&[u8]> = specs.iter().map(|(_, data)| data.as_slice()).collect();
        let mut files: Vec<PayloadFile<'_>> = specs
            .iter()
            .zip(readers.iter_mut())
            .map(|((name, data), reader)| PayloadFile {
                name,
                len: data.len() as u64,
                reader,
            })
            .collect();
        let disk = write_disk(tmp.as_file_mut(), seed, label, &mut files, size)?;
        Ok((tmp, disk))
    }

    fn sector(file: &mut File, lba: u64) -> [u8; 512] {
        let mut s = [0u8; 512];
        read_at(file, lba * SECTOR, &mut s).unwrap();
        s
    }

    fn bytes_at(file: &mut File, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        read_at(file, offset, &mut v).unwrap();
        v
    }

    fn u16_at(b: &[u8], at: usize) -> u64 {
        u64::from(u16::from_le_bytes(b[at..at + 2].try_into().unwrap()))
    }

    fn u32_at(b: &[u8], at: usize) -> u64 {
        u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn sha256_file(file: &mut File) -> Vec<u8> {
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        hasher.finalize().to_vec()
    }

    #[test]
    fn deterministic_and_seed_changes_guids() {
        let specs = sample_files();
        let (mut a, disk_a) = write(&SEED, "SAFEBOX", &specs).unwrap();
        let (mut b, disk_b) = write(&SEED, "SAFEBOX", &specs).unwrap();
        assert_eq!(disk_a, disk_b);
        assert_eq!(disk_a.size, GIB);
        assert_eq!(a.as_file().metadata().unwrap().len(), GIB);
        assert_eq!(sha256_file(a.as_file_mut()), sha256_file(b.as_file_mut()));

        let (mut c, disk_c) = write(&[8; 32], "SAFEBOX", &specs).unwrap();
        assert_eq!(disk_a, disk_c);
        let header_a = sector(a.as_file_mut(), 1);
        let header_c = sector(c.as_file_mut(), 1);
        assert_ne!(header_a[56..72], header_c[56..72], "disk GUID");
        let entry_a = sector(a.as_file_mut(), 2);
        let entry_c = sector(c.as_file_mut(), 2);
        assert_ne!(entry_a[16..32], entry_c[16..32], "partition GUID");
        assert_ne!(header_a[56..72], entry_a[16..32], "disk and partition GUIDs differ");
        let part = PART_FIRST_LBA;
        assert_ne!(
            sector(a.as_file_mut(), part)[67..71],
            sector(c.as_file_mut(), part)[67..71],
            "volume serial"
        );
        assert_ne!(sha256_file(a.as_file_mut()), sha256_file(c.as_file_mut()));

        // RFC 4122 version 4 and variant bits, in GPT's mixed-endian storage.
        for guid in [&header_a[56..72], &entry_a[16..32]] {
            assert_eq!(guid[7] >> 4, 4, "version nibble");
            assert_eq!(guid[8] >> 6, 0b10, "variant bits");
        }
    }

    /// The payload disk's bytes are pinned: the AWS backend publishes them, and a change would
    /// change every published snapshot. (Pinned before the writer learned ESP disks.)
    #[test]
    fn payload_disk_bytes_are_pinned() {
        let (mut tmp, disk) = write(&SEED, "SAFEBOX", &sample_files()).unwrap();
        assert_eq!(
            hex::encode(sha256_file(tmp.as_file_mut())),
            "f2bc0237ecaf6e215b1022e9692eae6738e1c6a746054624e6e39da33920d5ef"
        );
        let mib = |n: u64| n * MIB;
        assert_eq!(
            disk.data_extents,
            [0..mib(1) / 2, mib(1)..mib(3) / 2, mib(2)..mib(5) / 2, mib(3)..mib(9) / 2, GIB - mib(1) / 2..GIB]
        );
    }

    #[test]
    fn gpt_and_protective_mbr_are_valid() {
        let (mut tmp, disk) = write(&SEED, "SAFEBOX", &sample_files()).unwrap();
        let f = tmp.as_file_mut();
        let lbas = disk.size / 512;

        let mbr = sector(f, 0);
        assert_eq!(mbr[510..], [0x55, 0xAA]);
        assert_eq!(mbr[446 + 4], 0xEE);
        assert_eq!(u32_at(&mbr, 446 + 8), 1);
        assert_eq!(u32_at(&mbr, 446 + 12), (lbas - 1).min(0xFFFF_FFFF));
        assert!(mbr[462..510].iter().all(|&b| b == 0), "other MBR partitions empty");

        let primary = sector(f, 1);
        let backup = sector(f, lbas - 1);
        for (header, mine, alternate, entries_lba) in [(&primary, 1, lbas - 1, 2), (&backup, lbas - 1, 1, lbas - 33)] {
            assert_eq!(&header[..8], b"EFI PART");
            assert_eq!(u32_at(header, 8), 0x0001_0000);
            assert_eq!(u32_at(header, 12), 92);
            let mut copy = header[..92].to_vec();
            copy[16..20].fill(0);
            assert_eq!(u32_at(header, 16), u64::from(crc32fast::hash(&copy)), "header CRC");
            assert_eq!(u64_at(header, 24), mine);
            assert_eq!(u64_at(header, 32), alternate);
            assert_eq!(u64_at(header, 40), 34);
            assert_eq!(u64_at(header, 48), lbas - 34);
            assert_eq!(u64_at(header, 72), entries_lba);
            assert_eq!(u32_at(header, 80), 128);
            assert_eq!(u32_at(header, 84), 128);
            let entries = bytes_at(f, entries_lba * 512, 128 * 128);
            assert_eq!(u32_at(header, 88), u64::from(crc32fast::hash(&entries)), "entries CRC");
            assert!(header[92..].iter().all(|&b| b == 0));
        }
        assert_eq!(primary[56..72], backup[56..72]);

        let entries = bytes_at(f, 2 * 512, 128 * 128);
        // EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, mixed-endian.
        assert_eq!(
            entries[..16],
            [0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7]
        );
        assert_eq!(u64_at(&entries, 32), 2048);
        let last = u64_at(&entries, 40);
        assert_eq!(last, lbas - 2049);
        assert!(last < lbas - 33);
        assert_eq!((last + 1) % 2048, 0, "partition ends 1 MiB aligned");
        let name: Vec<u8> = "safebox-payload".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(entries[56..56 + name.len()], name[..]);
        assert!(entries[56 + name.len()..128].iter().all(|&b| b == 0));
        assert!(entries[128..].iter().all(|&b| b == 0), "one partition only");
    }

    #[test]
    fn fat32_boot_sector_and_fsinfo() {
        let (mut tmp, disk) = write(&SEED, "SAFEBOX", &sample_files()).unwrap();
        let f = tmp.as_file_mut();
        let entry = sector(f, 2);
        let part_lba = u64_at(&entry, 32);
        let part_sectors = u64_at(&entry, 40) - part_lba + 1;
        let bs = sector(f, part_lba);
        assert_eq!(bs[0], 0xEB);
        assert_eq!(bs[2], 0x90);
        assert_eq!(u16_at(&bs, 11), 512, "bytes per sector");
        let spc = u64::from(bs[13]);
        assert_eq!(spc, 8, "4 KiB clusters on a 1 GiB disk");
        assert_eq!(u16_at(&bs, 14), 32, "reserved sectors");
        assert_eq!(bs[16], 2, "FATs");
        assert_eq!(u16_at(&bs, 17), 0, "root entries");
        assert_eq!(u16_at(&bs, 19), 0, "16-bit total sectors");
        assert_eq!(bs[21], 0xF8, "media");
        assert_eq!(u16_at(&bs, 22), 0, "16-bit FAT size");
        assert_eq!(u32_at(&bs, 28), part_lba, "hidden sectors");
        assert_eq!(u32_at(&bs, 32), part_sectors, "filesystem fills the partition");
        let fat_sectors = u32_at(&bs, 36);
        assert_eq!(u16_at(&bs, 40), 0);
        assert_eq!(u16_at(&bs, 42), 0);
        assert_eq!(u32_at(&bs, 44), 2, "root cluster");
        assert_eq!(u16_at(&bs, 48), 1, "FSInfo sector");
        assert_eq!(u16_at(&bs, 50), 6, "backup boot sector");
        assert_eq!(bs[66], 0x29);
        assert_eq!(&bs[71..82], b"SAFEBOX    ");
        assert_eq!(&bs[82..90], b"FAT32   ");
        assert_eq!(bs[510..], [0x55, 0xAA]);
        assert_eq!(sector(f, part_lba + 6), bs, "backup boot sector");

        let data_sectors = part_sectors - 32 - 2 * fat_sectors;
        let clusters = data_sectors / spc;
        assert!(clusters >= 65_525, "a valid FAT32 cluster count");
        assert!(fat_sectors * 512 / 4 >= clusters + 2, "the FAT covers every cluster");

        let fat_at = (part_lba + 32) * 512;
        let fat1 = bytes_at(f, fat_at, usize::try_from(fat_sectors * 512).unwrap());
        let fat2 = bytes_at(f, fat_at + fat_sectors * 512, fat1.len());
        assert_eq!(fat1, fat2, "FATs mirrored");
        let entry_of = |c: u64| u32_at(&fat1, usize::try_from(c * 4).unwrap()) & 0x0FFF_FFFF;
        assert_eq!(u32_at(&fat1, 0), 0x0FFF_FFF8);
        assert_eq!(u32_at(&fat1, 4), 0x0FFF_FFFF);
        let free: Vec<u64> = (2..clusters + 2).filter(|&c| entry_of(c) == 0).collect();

        let info = sector(f, part_lba + 1);
        assert_eq!(u32_at(&info, 0), 0x4161_5252);
        assert_eq!(u32_at(&info, 484), 0x6141_7272);
        assert_eq!(u32_at(&info, 508), 0xAA55_0000);
        assert_eq!(u32_at(&info, 488), free.len() as u64, "free count");
        assert_eq!(u32_at(&info, 492), free[0], "next free");
        assert_eq!(sector(f, part_lba + 7), info, "FSInfo copy");
        assert_eq!(disk.size, GIB);
    }

    #[test]
    fn files_read_back_exactly() {
        let specs = sample_files();
        let (mut tmp, _) = write(&SEED, "PAYLOAD", &specs).unwrap();
        for (name, data) in &specs {
            assert_eq!(&read_payload_file(tmp.as_file_mut(), name).unwrap(), data, "{name}");
        }
        // Case-insensitive, and by short name.
        assert_eq!(read_payload_file(tmp.as_file_mut(), "PROD.EIF").unwrap(), specs[0].1);
        assert_eq!(
            read_payload_file(tmp.as_file_mut(), "MANIFE~1.JSO").unwrap(),
            specs[1].1
        );
        assert_eq!(read_payload_file(tmp.as_file_mut(), "readme.txt").unwrap(), specs[4].1);
        let missing = read_payload_file(tmp.as_file_mut(), "nope").unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn allocation_is_contiguous_in_order() {
        let specs = sample_files();
        let (mut tmp, _) = write(&SEED, "PAYLOAD", &specs).unwrap();
        let f = tmp.as_file_mut();
        let part = PART_FIRST_LBA;
        let bs = sector(f, part);
        let fat_sectors = u32_at(&bs, 36);
        let fat = bytes_at(f, (part + 32) * 512, 64 * 1024);
        let data_at = (part + 32 + 2 * fat_sectors) * 512;
        let dir = bytes_at(f, data_at, 4096);
        // The label first.
        assert_eq!(&dir[..11], b"PAYLOAD    ");
        assert_eq!(dir[11], 0x08);
        let shorts: Vec<&[u8]> = dir[32..]
            .chunks_exact(32)
            .take_while(|e| e[0] != 0)
            .filter(|e| e[11] != 0x0F)
            .collect();
        assert_eq!(shorts.len(), specs.len());
        let mut next = 3; // one root directory cluster
        for (e, (name, data)) in shorts.iter().zip(&specs) {
            assert_eq!(u32_at(e, 28), data.len() as u64, "{name}");
            assert_eq!(u16_at(e, 16), 0x21, "creation date 1980-01-01");
            assert_eq!(u16_at(e, 24), 0x21, "write date 1980-01-01");
            assert_eq!(u16_at(e, 22), 0, "write time 00:00:00");
            let first = (u16_at(e, 20) << 16) | u16_at(e, 26);
            if data.is_empty() {
                assert_eq!(first, 0, "{name}");
                continue;
            }
            assert_eq!(first, next, "{name}");
            let clusters = (data.len() as u64).div_ceil(4096);
            for c in first..first + clusters {
                let expect = if c + 1 == first + clusters { 0x0FFF_FFFF } else { c + 1 };
                assert_eq!(u32_at(&fat, usize::try_from(c * 4).unwrap()), expect);
            }
            next += clusters;
        }
        assert_eq!(u32_at(&fat, 8), 0x0FFF_FFFF, "root directory: one cluster");
        assert_eq!(
            u32_at(&fat, usize::try_from(next * 4).unwrap()),
            0,
            "free after the files"
        );
        assert_eq!(&shorts[0][..11], b"PROD    EIF");
        assert_eq!(&shorts[1][..11], b"MANIFE~1JSO");
        assert_eq!(&shorts[4][..11], b"README  TXT");
    }

    #[test]
    fn outside_data_extents_is_zero() {
        let (mut tmp, disk) = write(&SEED, "SAFEBOX", &sample_files()).unwrap();
        let mut end = 0;
        for r in &disk.data_extents {
            assert!(
                r.start >= end && (end == 0 || r.start > end),
                "sorted, disjoint, not adjacent"
            );
            assert!(r.start < r.end && r.end <= disk.size);
            assert_eq!(r.start % BLOCK_SIZE, 0);
            assert_eq!(r.end % BLOCK_SIZE, 0);
            end = r.end;
        }
        let total: u64 = disk.data_extents.iter().map(|r| r.end - r.start).sum();
        assert!(total <= 8 * MIB, "a few MiB of data, not {total}");

        let f = tmp.as_file_mut();
        f.seek(SeekFrom::Start(0)).unwrap();
        let zeros = vec![0u8; BLOCK_SIZE as usize];
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        for index in 0..disk.size / BLOCK_SIZE {
            f.read_exact(&mut block).unwrap();
            let at = index * BLOCK_SIZE;
            if !disk.data_extents.iter().any(|r| r.contains(&at)) {
                assert!(block == zeros, "non-zero block at {at:#x} outside the data extents");
            }
        }
        assert_eq!(f.read(&mut block).unwrap(), 0);
    }

    #[test]
    fn disk_sizes() {
        assert_eq!(payload_disk_size(&[]), GIB);
        assert_eq!(payload_disk_size(&[10 * MIB, 0, 100]), GIB);
        // Exactly the partition size no longer fits once the FATs are counted.
        assert_eq!(payload_disk_size(&[GIB - 2 * MIB]), 2 * GIB);
        assert_eq!(payload_disk_size(&[GIB - 12 * MIB]), GIB);
        assert_eq!(payload_disk_size(&[4 * GIB - 1]), 5 * GIB);
        // Absurd inputs do not panic and give an unsupported size.
        assert!(payload_disk_size(&[u64::MAX, u64::MAX]) > 2048 * GIB);
        assert!(Layout::for_size(payload_disk_size(&[3000 * GIB])).is_none());

        for gib in [1, 2, 7, 8, 9, 16, 17, 32, 33, 100, 1000, 2047] {
            let layout = Layout::for_size(gib * GIB).unwrap();
            assert!(layout.cluster_count >= MIN_CLUSTERS && layout.cluster_count <= MAX_CLUSTERS);
            assert!(layout.fat_sectors * SECTOR / 4 >= layout.cluster_count + 2);
            let end = layout.cluster_offset(layout.cluster_count + 2);
            assert!(end <= layout.part_offset() + layout.part_sectors * SECTOR);
            assert_eq!(
                layout.cluster_offset(2) % layout.cluster_bytes(),
                0,
                "data region aligned"
            );
            let expect_spc = match gib {
                ..=8 => 8,
                9..=16 => 16,
                17..=32 => 32,
                _ => 64,
            };
            assert_eq!(layout.sectors_per_cluster, expect_spc, "{gib} GiB");
        }
        assert!(Layout::for_size(2048 * GIB).is_some(), "the largest disk");
        assert!(Layout::for_size(2049 * GIB).is_none(), "beyond 32-bit sector counts");
    }

    #[test]
    fn short_names_are_deterministic_and_unique() {
        let plan = plan_names(&[
            "manifest.jsonl",
            "MANIFE~1.JSO",
            "manifest.json",
            "prod.eif",
            ".hidden",
            "x y.tar.gz",
        ])
        .unwrap();
        let shorts: Vec<&[u8; 11]> = plan.iter().map(|n| &n.short).collect();
        assert_eq!(
            shorts,
            [
                b"MANIFE~2JSO",
                b"MANIFE~1JSO",
                b"MANIFE~3JSO",
                b"PROD    EIF",
                b"HIDDEN~1   ",
                b"XYTAR~1 GZ "
            ]
        );
        assert!(plan[1].long.is_none(), "an upper-case 8.3 name needs no long name");
        assert!(
            plan[3].long.is_some(),
            "a lower-case name keeps its case in a long name"
        );
        // The checksum from the FAT specification's algorithm, computed by hand for "PROD    EIF".
        let mut sum = 0u8;
        for &b in b"PROD    EIF" {
            sum = (if sum & 1 == 1 { 0x80u8 } else { 0 })
                .wrapping_add(sum >> 1)
                .wrapping_add(b);
        }
        assert_eq!(lfn_checksum(b"PROD    EIF"), sum);
        // 26 units: two full long-name entries and no terminator.
        let units: Vec<u16> = "abcdefghijklmnopqrstuvwxyz".encode_utf16().collect();
        let entries = lfn_entries(&units, 9);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][0], 0x42);
        assert_eq!(entries[1][0], 0x01);
        assert_eq!(long_name(&entries, b"PROD    EIF"), None, "wrong checksum");
        let entries = lfn_entries(&units, lfn_checksum(b"PROD    EIF"));
        assert_eq!(
            long_name(&entries, b"PROD    EIF").as_deref(),
            Some("abcdefghijklmnopqrstuvwxyz")
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let data = b"hello".to_vec();
        let expect_err = |label: &str, specs: &[(&str, Vec<u8>)], kind: io::ErrorKind| {
            let err = write(&SEED, label, specs).unwrap_err();
            assert_eq!(
                err.kind(),
                kind,
                "{label:?} {:?}: {err}",
                specs.iter().map(|s| s.0).collect::<Vec<_>>()
            );
        };
        use io::ErrorKind::InvalidInput;
        expect_err(
            "SAFEBOX",
            &[("a.txt", data.clone()), ("A.TXT", data.clone())],
            InvalidInput,
        );
        for name in [
            "",
            "a/b",
            "a\\b",
            "a\u{1}b",
            "a:b",
            ".",
            "..",
            "trailing.",
            "trailing ",
            &"x".repeat(256),
        ] {
            expect_err("SAFEBOX", &[(name, data.clone())], InvalidInput);
        }
        assert!(write(&SEED, "SAFEBOX", &[(&"x".repeat(255), data.clone())]).is_ok());
        for label in ["", "safebox", "TWELVE CHARS", " LEADING", "TAB\t", "ÜBER"] {
            expect_err(label, &[("a.txt", data.clone())], InvalidInput);
        }

        // Readers yielding fewer or more bytes than declared.
        let mut short_reader: &[u8] = b"abc";
        let mut long_reader: &[u8] = b"abcdef";
        for (reader, len, kind) in [
            (&mut short_reader, 5, io::ErrorKind::UnexpectedEof),
            (&mut long_reader, 5, io::ErrorKind::InvalidData),
        ] {
            let mut tmp = tempfile::tempfile().unwrap();
            let mut files = [PayloadFile {
                name: "a.bin",
                len,
                reader,
            }];
            let err = write_payload_disk(&mut tmp, &SEED, "SAFEBOX", &mut files).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
        }

        // Too large for FAT32: rejected before anything is read or written.
        let mut empty: &[u8] = b"";
        let mut tmp = tempfile::tempfile().unwrap();
        let mut files = [PayloadFile {
            name: "big.eif",
            len: 1 << 32,
            reader: &mut empty,
        }];
        let err = write_payload_disk(&mut tmp, &SEED, "SAFEBOX", &mut files).unwrap_err();
        assert_eq!(err.kind(), InvalidInput, "{err}");
        assert_eq!(tmp.metadata().unwrap().len(), 0);

        // A non-empty output file.
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(b"x").unwrap();
        let err = write_payload_disk(&mut tmp, &SEED, "SAFEBOX", &mut []).unwrap_err();
        assert_eq!(err.kind(), InvalidInput, "{err}");

        // A cut cluster chain is an error when reading back.
        let specs = sample_files();
        let (mut tmp, _) = write(&SEED, "SAFEBOX", &specs).unwrap();
        write_at(
            tmp.as_file_mut(),
            (PART_FIRST_LBA + 32) * 512 + 3 * 4,
            &END_OF_CHAIN.to_le_bytes(),
        )
        .unwrap();
        let err = read_payload_file(tmp.as_file_mut(), "prod.eif").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

        // Garbage is not a payload disk.
        let mut garbage = io::Cursor::new(vec![0xFFu8; 8192]);
        assert!(read_payload_file(&mut garbage, "a").is_err());
        let mut tiny = io::Cursor::new(vec![0u8; 10]);
        assert!(read_payload_file(&mut tiny, "a").is_err());
    }

    /// Runs `tool` (trying the sbin directories too); `None` if it is not installed.
    fn run(tool: &str, args: &[&str]) -> Option<std::process::Output> {
        for path in [tool.to_owned(), format!("/usr/sbin/{tool}"), format!("/sbin/{tool}")] {
            match Command::new(&path).args(args).output() {
                Ok(output) => return Some(output),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{tool}: {e}"),
            }
        }
        println!("note: {tool} is not installed; skipping its check");
        None
    }

    #[test]
    fn external_tools_accept_the_disk_if_installed() {
        let specs = sample_files();
        let label = "SAFEBOX";
        let (mut tmp, disk) = write(&SEED, label, &specs).unwrap();
        check_with_tools(&mut tmp, &disk, &specs, label);
    }

    #[test]
    fn larger_disks_use_larger_clusters() {
        let specs = sample_files();
        for (gib, spc) in [(9, 16), (17, 32), (33, 64)] {
            let label = "BIG";
            let (mut tmp, disk) = write_sized(&SEED, label, &specs, gib * GIB).unwrap();
            assert_eq!(disk.size, gib * GIB);
            let f = tmp.as_file_mut();
            let bs = sector(f, PART_FIRST_LBA);
            assert_eq!(u64::from(bs[13]), spc, "{gib} GiB");
            let fat_sectors = u32_at(&bs, 36);
            let data_at = (PART_FIRST_LBA + 32 + 2 * fat_sectors) * 512;
            assert_eq!(data_at % (spc * 512), 0, "data region cluster-aligned");
            let clusters = (u32_at(&bs, 32) - 32 - 2 * fat_sectors) / spc;
            assert!(clusters >= 65_525 && fat_sectors * 128 >= clusters + 2);
            let used: u64 = 1 + specs
                .iter()
                .map(|(_, d)| (d.len() as u64).div_ceil(spc * 512))
                .sum::<u64>();
            let info = sector(f, PART_FIRST_LBA + 1);
            assert_eq!(u32_at(&info, 488), clusters - used, "free count");
            assert_eq!(u32_at(&info, 492), 2 + used, "next free");
            for (name, data) in &specs {
                assert_eq!(&read_payload_file(f, name).unwrap(), data, "{name} on {gib} GiB");
            }
            check_with_tools(&mut tmp, &disk, &specs, label);
        }
    }

    /// Checks the disk with sfdisk, fsck.fat and mtools, each if installed.
    fn check_with_tools(tmp: &mut tempfile::NamedTempFile, disk: &PayloadDisk, specs: &[(&str, Vec<u8>)], label: &str) {
        let path = tmp.path().to_str().unwrap().to_owned();

        if let Some(out) = run("sfdisk", &["-d", &path]) {
            let dump = String::from_utf8_lossy(&out.stdout);
            println!("{dump}{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success());
            assert!(dump.contains("label: gpt"));
            assert!(dump.contains("start=        2048"));
            assert!(dump.contains("type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"));
            assert!(dump.contains("name=\"safebox-payload\""));
        }
        if let Some(out) = run("sfdisk", &["--verify", &path]) {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("{text}");
            assert!(out.status.success(), "{text}");
        }

        // The partition alone, for fsck.fat (sparse: only the extents are copied).
        let part = tempfile::NamedTempFile::new().unwrap();
        let entry = sector(tmp.as_file_mut(), 2);
        let start = u64_at(&entry, 32) * 512;
        let end = (u64_at(&entry, 40) + 1) * 512;
        let mut part_file = part.reopen().unwrap();
        for r in &disk.data_extents {
            let (from, to) = (r.start.max(start), r.end.min(end));
            if from < to {
                let chunk = bytes_at(tmp.as_file_mut(), from, usize::try_from(to - from).unwrap());
                write_at(&mut part_file, from - start, &chunk).unwrap();
            }
        }
        part_file.set_len(end - start).unwrap();
        let part_path = part.path().to_str().unwrap().to_owned();
        if let Some(out) = run("fsck.fat", &["-n", "-v", &part_path]) {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("{text}");
            assert!(out.status.success(), "{text}");
            assert!(!text.contains("differ"), "{text}");
        }

        let image = format!("{path}@@1M");
        if let Some(out) = run("mdir", &["-i", &image, "::"]) {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("{text}");
            assert!(out.status.success(), "{text}");
            assert!(text.contains(&format!("Volume in drive : is {label}")), "{text}");
            for (name, _) in specs {
                // mdir lists 8.3 names only in its short-name columns.
                let shown = if *name == "README.TXT" { "README   TXT" } else { name };
                assert!(text.contains(shown), "{name} in {text}");
            }
            let dest = tempfile::tempdir().unwrap();
            for (name, data) in specs {
                let target = dest.path().join(format!("copy-{}", data.len()));
                let source = format!("::{name}");
                let out = run("mcopy", &["-n", "-i", &image, &source, target.to_str().unwrap()]).unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                assert_eq!(&std::fs::read(&target).unwrap(), data, "{name} via mcopy");
            }
        }
    }
}
