//! Reading a file back from a disk these writers made.

use std::io::{self, Read, Seek, SeekFrom};

use super::fat32::lfn_checksum;
use super::{
    damaged, DiskError, ATTR_DIRECTORY, ATTR_LONG_NAME, ATTR_VOLUME_ID, DIR_ENTRY_SIZE, FAT_ENTRY_MASK, LFN_OFFSETS,
    MAX_DIR_ENTRIES, MAX_LFN_ENTRIES, MIN_END_OF_CHAIN, SECTOR,
};

pub(super) fn read_at<D: Read + Seek>(disk: &mut D, offset: u64, buf: &mut [u8]) -> io::Result<()> {
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
    fn read_chain<D: Read + Seek>(
        &self,
        disk: &mut D,
        first: u32,
        len: u64,
        exact: bool,
    ) -> Result<Vec<u8>, DiskError> {
        let mut out = Vec::new();
        let mut cluster = first;
        let mut steps = 0u64;
        while (out.len() as u64) < len {
            if cluster < 2 || u64::from(cluster) >= self.cluster_count + 2 {
                return Err(damaged(format!("cluster {cluster:#x} in a chain is out of range")));
            }
            steps += 1;
            if steps > self.cluster_count {
                return Err(damaged("a cluster chain loops"));
            }
            let start = out.len();
            let take = self.cluster_bytes.min(len - start as u64);
            out.resize(
                start + usize::try_from(take).map_err(|_| damaged("cluster too large"))?,
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
                        return Err(damaged("a file's cluster chain is shorter than its size"));
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
pub(super) fn long_name(entries: &[[u8; 32]], short: &[u8; 11]) -> Option<String> {
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

/// Reads the file at `path` (`manifest.json`, `EFI/BOOT/BOOTX64.EFI`: each part its long or its
/// short name, ignoring case) from the FAT32 filesystem in the first GPT partition of `disk`,
/// following cluster chains. For tests and auditors; it reads the structures
/// [`super::write_payload_disk`] and [`super::write_esp_disk`] write, not every FAT32 variant
/// (512-byte sectors only).
///
/// # Errors
/// [`DiskError::NotFound`] if there is no such file; [`DiskError::Damaged`] if the disk is not
/// such a disk or its structures are inconsistent; and what reading returns.
pub fn read_payload_file(disk: &mut (impl Read + Seek), path: &str) -> Result<Vec<u8>, DiskError> {
    let mut header = [0u8; 512];
    read_at(disk, SECTOR, &mut header)?;
    if &header[..8] != b"EFI PART" {
        return Err(damaged("no GPT header at LBA 1"));
    }
    let entries_at = le64(&header, 72)
        .checked_mul(SECTOR)
        .ok_or_else(|| damaged("GPT entries LBA out of range"))?;
    let mut entry = [0u8; 512];
    read_at(disk, entries_at, &mut entry)?;
    if entry[..16].iter().all(|&b| b == 0) {
        return Err(damaged("the first GPT partition entry is unused"));
    }
    // Bounding the partition start keeps every offset computed below far from overflowing.
    let part = le64(&entry, 32)
        .checked_mul(SECTOR)
        .filter(|&part| part < 1 << 50)
        .ok_or_else(|| damaged("partition start out of range"))?;

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
        return Err(damaged(
            "the partition does not hold a FAT32 filesystem with 512-byte sectors",
        ));
    }
    let data_sectors = total
        .checked_sub(reserved + fats * fat_sectors)
        .ok_or_else(|| damaged("the FAT32 boot sector's sizes are inconsistent"))?;
    let volume = Volume {
        fat: part + reserved * SECTOR,
        data: part + (reserved + fats * fat_sectors) * SECTOR,
        cluster_bytes: sectors_per_cluster * SECTOR,
        // Clusters beyond what the FAT can describe do not exist.
        cluster_count: (data_sectors / sectors_per_cluster).min((fat_sectors * SECTOR / 4).saturating_sub(2)),
    };

    let mut dir = volume.read_chain(disk, root, MAX_DIR_ENTRIES * DIR_ENTRY_SIZE, false)?;
    let parts: Vec<&str> = path.split('/').collect();
    for (index, part) in parts.iter().enumerate() {
        let last = index + 1 == parts.len();
        let Some((attr, first, size)) = find_entry(&dir, part) else {
            break;
        };
        let is_dir = attr & ATTR_DIRECTORY != 0;
        if last && !is_dir {
            return volume.read_chain(disk, first, size, true);
        }
        if last || !is_dir {
            break;
        }
        dir = volume.read_chain(disk, first, MAX_DIR_ENTRIES * DIR_ENTRY_SIZE, false)?;
    }
    Err(DiskError::NotFound(path.to_owned()))
}

/// The attributes, first cluster and size of the entry called `name` (long or short name,
/// ignoring case) in the directory `dir`; the label, `.` and `..` never match.
fn find_entry(dir: &[u8], name: &str) -> Option<(u8, u32, u64)> {
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
        if e[11] & ATTR_VOLUME_ID != 0 || e[0] == b'.' {
            continue;
        }
        let matches =
            long.is_some_and(|long| long.to_uppercase() == wanted) || short_display(&short).to_uppercase() == wanted;
        if matches {
            let first = u32::from_le_bytes([e[26], e[27], e[20], e[21]]);
            let size = u64::from(u32::from_le_bytes([e[28], e[29], e[30], e[31]]));
            return Some((e[11], first, size));
        }
    }
    None
}
