//! Deterministic GPT/FAT32 disks: the payload volume the AWS backend publishes for an EIF image,
//! and the bootable EFI System Partition disk of a UKI image.
//!
//! Both are a GPT disk with exactly one partition holding one FAT32 filesystem. Every byte is a
//! function of the inputs only — the files (paths, order, contents), a 32-byte seed and the
//! volume label — so anyone holding the same inputs rebuilds the disk bit for bit and can compare
//! digests.
//!
//! - Payload disk ([`write_payload_disk`], sized by [`payload_disk_size`]): files in the root
//!   directory (the EIF, `manifest.json`, `seal-proof.json`), a whole number of GiB.
//! - ESP disk ([`write_esp_disk`], sized by [`esp_disk_size`], digest by [`esp_disk_sha256`]
//!   without writing it): files at paths with folders (`EFI/BOOT/BOOTX64.EFI`, `manifest.json`,
//!   `seal-proof.json`), a whole number of MiB.
//!
//! [`read_payload_file`] reads a file back from either (for tests and auditors).
//!
//! # Layout
//!
//! - 512-byte sectors. A payload disk is the smallest whole number of GiB (at least one, as EBS
//!   volumes are sized in GiB) that holds 1 MiB of leading GPT space, the filesystem and 1 MiB of
//!   trailing GPT space, reserving root directory room for the longest names. An ESP disk is the
//!   smallest whole number of MiB that holds the same with the directories as planned; an EBS
//!   volume made from it is rounded up to whole GiB of zeros, which leaves the backup GPT short of
//!   the volume's end, as on every volume grown from a snapshot (firmware and Linux use the
//!   primary GPT).
//! - LBA 0: protective MBR, one `0xEE` partition from LBA 1 over the whole disk (the sector count
//!   capped at `0xFFFFFFFF`). LBA 1: primary GPT header; LBA 2..=33: 128 entries of 128 bytes.
//!   The last 33 sectors: the backup entries, then the backup header.
//! - Partition 1, from LBA 2048 (1 MiB) to 1 MiB before the end of the disk: on a payload disk
//!   named `safebox-payload`, type Microsoft basic data (`EBD0A0A2-B9E5-4433-87C0-68B6B72699C7`);
//!   on an ESP disk named `EFI System Partition`, type EFI System
//!   (`C12A7328-F81F-11D2-BA4B-00A0C93EC93B`). No attribute bits.
//! - FAT32 filling the partition: 32 reserved sectors (boot sector at 0, FSInfo at 1, their
//!   copies at 6 and 7), two FATs sized for every cluster of the partition (grown by a few sectors
//!   where needed so the data region is cluster-aligned on disk), then the data region. Cluster size
//!   (Microsoft's FAT32 defaults): 4 KiB for partitions up to 8 GiB, 8 KiB up to 16 GiB, 16 KiB up
//!   to 32 GiB, 32 KiB above; that keeps the cluster count valid for FAT32 (at least 65525) for
//!   every disk from 1 GiB up to the 2 TiB that a 32-bit sector count allows. A smaller (ESP)
//!   partition halves the cluster size, down to 512 bytes, until it has 65525 clusters; an ESP
//!   disk is therefore at least about 35 MiB.
//! - The root directory starts at cluster 2 and takes as many clusters as its entries need: the
//!   volume label, then one entry per child (folder or file) in the order the file list first
//!   names it, each preceded by VFAT long-name entries unless the name already is an upper-case
//!   8.3 name. Folders follow, in the order the file list first names them, each as many clusters
//!   as its entries need: `.` (its own first cluster), `..` (its parent's, 0 for the root), then
//!   its children as in the root. The files follow contiguously, in the given order; an empty
//!   file has no cluster (first cluster 0). The FATs chain each of these; every other cluster is
//!   free.
//!
//! # Fixed values
//!
//! - Disk GUID and partition GUID: the first 16 bytes of SHA-256(`"safebox-disk-guid"` || seed),
//!   resp. SHA-256(`"safebox-partition-guid"` || seed), read as an RFC 4122 GUID in text order,
//!   with the version 4 and RFC 4122 variant bits set; stored in GPT's mixed-endian form.
//! - Volume serial number: the first 4 bytes, little-endian, of
//!   SHA-256(`"safebox-volume-serial"` || seed).
//! - Every FAT timestamp (creation, access, write; on files, folders and the label entry) is the
//!   DOS epoch, 1980-01-01 00:00:00. File attributes: archive; folders: directory. Boot sector OEM
//!   name `MSWIN4.1`, drive number `0x80`, geometry 63 sectors × 255 heads, hidden sectors 2048.
//! - Short names (per folder): a name that is already an upper-case 8.3 name is used as is, with
//!   no long-name entries. Otherwise the basis is the name upper-cased (ASCII), with leading
//!   dots, spaces and all but the last dot removed and other characters not allowed in short
//!   names replaced by `_`, cut to 8 + 3 characters. If nothing was replaced, removed or cut (only
//!   the case differs, as for `prod.eif` → `PROD.EIF`), the basis is used as is; otherwise it gets
//!   the smallest numeric tail `~N` not taken by an earlier name or by an upper-case 8.3 name
//!   (`manifest.json` → `MANIFE~1.JSO`).
//!
//! Zero regions are never written: the output file is expected fresh and empty, the writer seeks
//! over zeros and sets the final length, and [`PayloadDisk::data_extents`] says where non-zero
//! bytes may be, in [`BLOCK_SIZE`] blocks, for an uploader to the EBS direct API.

mod fat32;
mod gpt;
mod names;
mod reader;
mod writer;

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;

pub use reader::read_payload_file;
use writer::Placed;

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

/// One file to place on an ESP disk, in order.
pub struct EspFile<'a> {
    /// Its path from the root, folders separated by `/` (`EFI/BOOT/BOOTX64.EFI`); each part
    /// follows [`PayloadFile::name`]'s rules.
    pub path: &'a str,
    /// The exact length in bytes, as [`PayloadFile::len`].
    pub len: u64,
    /// The file's content.
    pub reader: &'a mut dyn Read,
}

/// What a disk writer wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadDisk {
    /// The total disk size in bytes: [`payload_disk_size`] or [`esp_disk_size`] of the files.
    pub size: u64,
    /// Sorted, non-overlapping, non-adjacent byte ranges, aligned to [`BLOCK_SIZE`], that may hold
    /// non-zero bytes; every byte outside them is zero.
    pub data_extents: Vec<Range<u64>>,
}

/// Why a disk could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The files, names or label cannot make a disk; checked before anything is read or written.
    #[error("disk image: {0}")]
    Invalid(String),
    /// A reader yielded fewer bytes than its declared length.
    #[error("disk image: {name:?} ended after {got} of its {len} bytes")]
    Short {
        /// The file's path.
        name: String,
        /// Bytes read.
        got: u64,
        /// Bytes declared.
        len: u64,
    },
    /// A reader yielded more bytes than its declared length.
    #[error("disk image: {name:?} has more than its declared {len} bytes")]
    Long {
        /// The file's path.
        name: String,
        /// Bytes declared.
        len: u64,
    },
    /// What was read is not such a disk, or its structures are inconsistent.
    #[error("disk image: {0}")]
    Damaged(String),
    /// The disk has no such file.
    #[error("disk image: no file {0:?}")]
    NotFound(String),
    /// Reading or writing failed.
    #[error("disk image: {0}")]
    Io(#[from] io::Error),
}

impl DiskError {
    /// The I/O error kind this corresponds to: `InvalidInput`, `UnexpectedEof`, `InvalidData`,
    /// `NotFound`, or the underlying error's.
    #[must_use]
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Invalid(_) => io::ErrorKind::InvalidInput,
            Self::Short { .. } => io::ErrorKind::UnexpectedEof,
            Self::Long { .. } | Self::Damaged(_) => io::ErrorKind::InvalidData,
            Self::NotFound(_) => io::ErrorKind::NotFound,
            Self::Io(e) => e.kind(),
        }
    }
}

impl From<DiskError> for io::Error {
    fn from(error: DiskError) -> Self {
        match error {
            DiskError::Io(e) => e,
            other => io::Error::new(other.kind(), other.to_string()),
        }
    }
}

/// The partition a disk kind has.
pub(super) struct PartitionKind {
    /// The partition type GUID in text order.
    type_guid: [u8; 16],
    /// The partition name.
    name: &'static str,
}

/// Microsoft basic data, `EBD0A0A2-B9E5-4433-87C0-68B6B72699C7`.
const PAYLOAD_PARTITION: PartitionKind = PartitionKind {
    type_guid: [
        0xEB, 0xD0, 0xA0, 0xA2, 0xB9, 0xE5, 0x44, 0x33, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
    ],
    name: "safebox-payload",
};

/// EFI System Partition, `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` (UEFI 2.10 §5.3.3).
const ESP_PARTITION: PartitionKind = PartitionKind {
    type_guid: [
        0xC1, 0x2A, 0x73, 0x28, 0xF8, 0x1F, 0x11, 0xD2, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
    ],
    name: "EFI System Partition",
};

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
/// Characters a short name may hold besides upper-case letters and digits.
const SHORT_NAME_SPECIALS: &[u8] = b"!#$%&'()-@^_`{}~";

fn invalid(msg: impl Into<String>) -> DiskError {
    DiskError::Invalid(msg.into())
}

fn damaged(msg: impl Into<String>) -> DiskError {
    DiskError::Damaged(msg.into())
}

fn to_u32(value: u64, what: &str) -> Result<u32, DiskError> {
    u32::try_from(value).map_err(|_| invalid(format!("{what} {value} does not fit in 32 bits")))
}

fn to_u16(value: u64, what: &str) -> Result<u16, DiskError> {
    u16::try_from(value).map_err(|_| invalid(format!("{what} {value} does not fit in 16 bits")))
}

/// The size the disk for files of these lengths will have, so callers can size the EBS
/// snapshot before writing: the smallest whole number of GiB (at least 1) whose FAT32 volume
/// holds the files, reserving root directory room for the longest names.
///
/// If no FAT32 payload volume can hold the files (more than 2 TiB), the result exceeds
/// the largest supported size and [`write_payload_disk`] rejects those files.
#[must_use]
pub fn payload_disk_size(file_lens: &[u64]) -> u64 {
    writer::payload_size(file_lens)
}

fn payload_placed<'r, 'a>(files: &'r mut [PayloadFile<'a>]) -> Result<Vec<Placed<'r, 'a>>, DiskError> {
    files
        .iter_mut()
        .map(|f| {
            names::check_name(f.name)?;
            Ok(Placed {
                path: f.name,
                components: vec![f.name],
                len: f.len,
                reader: &mut *f.reader,
            })
        })
        .collect()
}

fn esp_placed<'r, 'a>(files: &'r mut [EspFile<'a>]) -> Result<Vec<Placed<'r, 'a>>, DiskError> {
    files
        .iter_mut()
        .map(|f| {
            let components: Vec<&str> = f.path.split('/').collect();
            for part in &components {
                names::check_name(part)?;
            }
            Ok(Placed {
                path: f.path,
                components,
                len: f.len,
                reader: &mut *f.reader,
            })
        })
        .collect()
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
/// [`DiskError::Invalid`] for a bad label, a bad or duplicate file name, a file over 4 GiB − 1,
/// files too large for a FAT32 payload volume, or a non-empty `out` (all checked before anything
/// is written); [`DiskError::Short`] or [`DiskError::Long`] if a reader yields fewer or more
/// bytes than its `len`; and what reading or writing returns. After an error `out` holds a
/// partial disk and should be discarded.
pub fn write_payload_disk(
    out: &mut File,
    seed: &[u8; 32],
    label: &str,
    files: &mut [PayloadFile<'_>],
) -> Result<PayloadDisk, DiskError> {
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
) -> Result<PayloadDisk, DiskError> {
    let mut placed = payload_placed(files)?;
    writer::plan(seed, label, &PAYLOAD_PARTITION, &placed, size)?.write(out, &mut placed)
}

/// The size of the ESP disk holding files of these paths and lengths, in this order.
///
/// # Errors
/// [`DiskError::Invalid`] for a bad path or files too large for a FAT32 volume.
pub fn esp_disk_size(files: &[(&str, u64)]) -> Result<u64, DiskError> {
    let mut empty: Vec<io::Empty> = files.iter().map(|_| io::empty()).collect();
    let mut esp: Vec<EspFile<'_>> = files
        .iter()
        .zip(empty.iter_mut())
        .map(|(&(path, len), reader)| EspFile { path, len, reader })
        .collect();
    writer::esp_size(&esp_placed(&mut esp)?)
}

/// Writes the ESP disk for `files` to `out`, a fresh, empty file, as [`write_payload_disk`]
/// writes a payload disk; its size is [`esp_disk_size`].
///
/// # Errors
/// As [`write_payload_disk`].
pub fn write_esp_disk(
    out: &mut File,
    seed: &[u8; 32],
    label: &str,
    files: &mut [EspFile<'_>],
) -> Result<PayloadDisk, DiskError> {
    let mut placed = esp_placed(files)?;
    let size = writer::esp_size(&placed)?;
    writer::plan(seed, label, &ESP_PARTITION, &placed, size)?.write(out, &mut placed)
}

/// The SHA-256 of the ESP disk [`write_esp_disk`] would write for the same arguments, computed
/// in one sequential pass without writing anything (zeros included, so it is the digest of the
/// raw disk file).
///
/// # Errors
/// As [`write_esp_disk`], bar the output file.
pub fn esp_disk_sha256(seed: &[u8; 32], label: &str, files: &mut [EspFile<'_>]) -> Result<[u8; 32], DiskError> {
    let mut placed = esp_placed(files)?;
    let size = writer::esp_size(&placed)?;
    writer::plan(seed, label, &ESP_PARTITION, &placed, size)?.sha256(&mut placed)
}

#[cfg(test)]
mod tests;
