//! The GPT structures of the disks: protective MBR, headers and the partition entry array
//! (UEFI 2.10 §5.2-5.3), and GUIDs derived from the seed.

use sha2::{Digest, Sha256};

use super::fat32::Layout;
use super::{PartitionKind, GPT_ENTRY_COUNT, GPT_ENTRY_SECTORS, GPT_ENTRY_SIZE, PART_FIRST_LBA};

/// A GUID derived from the seed: RFC 4122 text-order bytes, version 4, RFC 4122 variant.
pub(super) fn derive_guid(domain: &str, seed: &[u8; 32]) -> [u8; 16] {
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
pub(super) fn gpt_guid(text_order: [u8; 16]) -> [u8; 16] {
    let mut guid = text_order;
    guid[0..4].reverse();
    guid[4..6].reverse();
    guid[6..8].reverse();
    guid
}

pub(super) fn protective_mbr(layout: &Layout) -> [u8; 512] {
    let mut s = [0u8; 512];
    let sectors = u32::try_from(layout.lbas - 1).unwrap_or(u32::MAX);
    // Status 0, start CHS 0/0/2, type 0xEE, end CHS all ones, from LBA 1.
    s[446..462].copy_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0, 0, 0, 0]);
    s[458..462].copy_from_slice(&sectors.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

pub(super) fn gpt_entries(layout: &Layout, kind: &PartitionKind, part_guid: [u8; 16]) -> Vec<u8> {
    let mut table = vec![0u8; GPT_ENTRY_COUNT * GPT_ENTRY_SIZE];
    table[0..16].copy_from_slice(&gpt_guid(kind.type_guid));
    table[16..32].copy_from_slice(&gpt_guid(part_guid));
    table[32..40].copy_from_slice(&PART_FIRST_LBA.to_le_bytes());
    table[40..48].copy_from_slice(&layout.part_last_lba().to_le_bytes());
    for (slot, unit) in table[56..128].chunks_exact_mut(2).zip(kind.name.encode_utf16()) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    table
}

pub(super) fn gpt_header(layout: &Layout, disk_guid: [u8; 16], entries_crc: u32, backup: bool) -> [u8; 512] {
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
