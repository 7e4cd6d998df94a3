//! The FAT32 structures of the disks (Microsoft "FAT: General Overview of On-Disk Format"
//! 1.03): the geometry of a volume filling the partition, boot sector, FSInfo, and directory
//! entries.

use sha2::{Digest, Sha256};

use super::{
    invalid, to_u16, to_u32, DiskError, ATTR_LONG_NAME, BACKUP_BOOT_SECTOR, DIR_ENTRY_SIZE, FAT_DATE, FAT_TIME,
    FSINFO_SECTOR, GIB, LFN_CHARS, LFN_OFFSETS, MAX_CLUSTERS, MAX_LFN_ENTRIES, MIB, MIN_CLUSTERS, NUM_FATS,
    PART_FIRST_LBA, RESERVED_SECTORS, ROOT_CLUSTER, SECTOR,
};

/// The geometry of a disk of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    /// Disk size in bytes.
    pub(super) size: u64,
    /// Disk size in sectors.
    pub(super) lbas: u64,
    /// Partition (and filesystem) size in sectors.
    pub(super) part_sectors: u64,
    pub(super) sectors_per_cluster: u64,
    /// Sectors of one FAT.
    pub(super) fat_sectors: u64,
    /// Data clusters, numbered 2..cluster_count + 2.
    pub(super) cluster_count: u64,
}

impl Layout {
    /// The layout of a disk of `size` bytes (a whole number of MiB), or `None` if no valid
    /// FAT32 volume fills it.
    pub(super) fn for_size(size: u64) -> Option<Self> {
        // (Masks rather than `is_multiple_of`, which needs Rust 1.87; the divisor is a power of two.)
        if size & (MIB - 1) != 0 {
            return None;
        }
        let lbas = size / SECTOR;
        let part_sectors = lbas.checked_sub(2 * PART_FIRST_LBA)?;
        if part_sectors > u64::from(u32::MAX) {
            return None;
        }
        let part_bytes = part_sectors * SECTOR;
        let mut sectors_per_cluster = match part_bytes {
            b if b <= 8 * GIB => 8,
            b if b <= 16 * GIB => 16,
            b if b <= 32 * GIB => 32,
            _ => 64,
        };
        // From 1 GiB up the size table alone gives enough clusters; a smaller volume halves the
        // cluster (down to one sector) until it has the 65525 that make it FAT32.
        loop {
            if let Some(layout) = Self::with_cluster(size, lbas, part_sectors, sectors_per_cluster) {
                return Some(layout);
            }
            if sectors_per_cluster == 1 {
                return None;
            }
            sectors_per_cluster /= 2;
        }
    }

    fn with_cluster(size: u64, lbas: u64, part_sectors: u64, sectors_per_cluster: u64) -> Option<Self> {
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

    pub(super) fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }

    pub(super) fn part_offset(&self) -> u64 {
        PART_FIRST_LBA * SECTOR
    }

    pub(super) fn part_last_lba(&self) -> u64 {
        PART_FIRST_LBA + self.part_sectors - 1
    }

    pub(super) fn fat_offset(&self, index: u64) -> u64 {
        self.part_offset() + (RESERVED_SECTORS + index * self.fat_sectors) * SECTOR
    }

    pub(super) fn cluster_offset(&self, cluster: u64) -> u64 {
        self.fat_offset(NUM_FATS) + (cluster - 2) * self.cluster_bytes()
    }

    pub(super) fn clusters_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.cluster_bytes())
    }

    /// Clusters of a directory of `dir_entries` entries (at least one).
    pub(super) fn dir_clusters(&self, dir_entries: u64) -> u64 {
        self.clusters_for(dir_entries.saturating_mul(DIR_ENTRY_SIZE)).max(1)
    }

    /// Whether directories taking `dir_clusters` clusters and files of `lens` fit.
    pub(super) fn fits(&self, dir_clusters: u64, lens: &[u64]) -> bool {
        lens.iter()
            .try_fold(dir_clusters, |acc, &len| acc.checked_add(self.clusters_for(len)))
            .is_some_and(|clusters| clusters <= self.cluster_count)
    }
}

/// The most root directory entries `files` files can take: the label plus, per file, the
/// longest possible long name and the short entry.
pub(super) fn worst_dir_entries(files: usize) -> u64 {
    (files as u64).saturating_mul(MAX_LFN_ENTRIES + 1).saturating_add(1)
}

pub(super) fn volume_serial(seed: &[u8; 32]) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"safebox-volume-serial")
        .chain_update(seed)
        .finalize();
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

pub(super) fn boot_sector(layout: &Layout, serial: u32, label: &[u8; 11]) -> Result<[u8; 512], DiskError> {
    let mut s = [0u8; 512];
    s[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    s[3..11].copy_from_slice(b"MSWIN4.1");
    s[11..13].copy_from_slice(&512u16.to_le_bytes());
    s[13] = u8::try_from(layout.sectors_per_cluster).map_err(|_| invalid("cluster size out of range"))?;
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

pub(super) fn fs_info(free_clusters: u32, next_free: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free_clusters.to_le_bytes());
    s[492..496].copy_from_slice(&next_free.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

/// The VFAT checksum of a short name, stored in each of its long-name entries.
pub(super) fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

pub(super) fn short_entry(name: &[u8; 11], attr: u8, first_cluster: u32, size: u32) -> [u8; 32] {
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
pub(super) fn lfn_entries(units: &[u16], checksum: u8) -> Vec<[u8; 32]> {
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
