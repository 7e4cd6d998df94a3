use super::fat32::{lfn_checksum, lfn_entries, Layout};
use super::names::plan_names;
use super::reader::{long_name, read_at};
use super::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;

fn write_at(out: &mut File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    out.seek(SeekFrom::Start(offset))?;
    out.write_all(bytes)
}

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
        [
            0..mib(1) / 2,
            mib(1)..mib(3) / 2,
            mib(2)..mib(5) / 2,
            mib(3)..mib(9) / 2,
            GIB - mib(1) / 2..GIB
        ]
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
    let package = match tool {
        "sfdisk" => "fdisk",
        "fsck.fat" => "dosfstools",
        _ => "mtools",
    };
    // CI installs the checkers (scripts/setup): there a missing one is a failure, not a skip.
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{tool} is not installed; run scripts/setup or `apt-get install {package}`"
    );
    println!("note: {tool} is not installed (apt-get install {package}); skipping its check");
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

fn esp_specs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("EFI/BOOT/BOOTX64.EFI", content(3_000_001, 5)),
        ("manifest.json", b"{\"format\":\"uki\"}".to_vec()),
        ("seal-proof.json", content(700, 6)),
        ("EFI/safebox/notes.txt", content(40, 7)),
    ]
}

fn esp_files<'a>(specs: &'a [(&'a str, Vec<u8>)], readers: &'a mut [&'a [u8]]) -> Vec<EspFile<'a>> {
    specs
        .iter()
        .zip(readers.iter_mut())
        .map(|((path, data), reader)| EspFile {
            path,
            len: data.len() as u64,
            reader,
        })
        .collect()
}

fn write_esp(specs: &[(&str, Vec<u8>)]) -> (tempfile::NamedTempFile, PayloadDisk, [u8; 32]) {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    let mut readers: Vec<&[u8]> = specs.iter().map(|(_, d)| d.as_slice()).collect();
    let disk = write_esp_disk(tmp.as_file_mut(), &SEED, "SAFEBOX", &mut esp_files(specs, &mut readers)).unwrap();
    let mut readers: Vec<&[u8]> = specs.iter().map(|(_, d)| d.as_slice()).collect();
    let digest = esp_disk_sha256(&SEED, "SAFEBOX", &mut esp_files(specs, &mut readers)).unwrap();
    (tmp, disk, digest)
}

#[test]
fn esp_disk_has_folders_the_esp_type_and_a_digest_of_its_bytes() {
    let specs = esp_specs();
    let (mut tmp, disk, digest) = write_esp(&specs);
    let f = tmp.as_file_mut();
    // Whole MiB, at least the 65525 clusters FAT32 needs (here 512-byte clusters).
    assert_eq!(disk.size % MIB, 0);
    assert!(disk.size < 40 * MIB, "{}", disk.size);
    assert_eq!(f.metadata().unwrap().len(), disk.size);
    assert_eq!(sha256_file(f), digest, "the streamed digest is the file's");
    let lens: Vec<(&str, u64)> = specs.iter().map(|(p, d)| (*p, d.len() as u64)).collect();
    assert_eq!(esp_disk_size(&lens).unwrap(), disk.size);

    let entries = bytes_at(f, 2 * 512, 128);
    // C12A7328-F81F-11D2-BA4B-00A0C93EC93B, mixed-endian.
    assert_eq!(
        entries[..16],
        [0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]
    );
    let bs = sector(f, PART_FIRST_LBA);
    assert_eq!(bs[13], 1, "one-sector clusters on a small partition");
    for (path, data) in &specs {
        assert_eq!(&read_payload_file(f, path).unwrap(), data, "{path}");
    }
    assert_eq!(read_payload_file(f, "efi/boot/bootx64.efi").unwrap(), specs[0].1);
    assert_eq!(
        read_payload_file(f, "EFI/BOOT").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        read_payload_file(f, "BOOTX64.EFI").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    // The root: label, EFI (a folder, cluster 3), then the two files with long names.
    let fat_sectors = u32_at(&bs, 36);
    let data_at = (PART_FIRST_LBA + 32 + 2 * fat_sectors) * 512;
    let root = bytes_at(f, data_at, 512);
    assert_eq!(&root[32..43], b"EFI        ");
    assert_eq!(root[43], 0x10);
    assert_eq!(u16_at(&root, 32 + 26), 3);
    // EFI's folder: `.` (itself), `..` (0: the root), then BOOT and safebox.
    let efi = bytes_at(f, data_at + 512, 512);
    assert_eq!(&efi[..11], b".          ");
    assert_eq!(u16_at(&efi, 26), 3);
    assert_eq!(&efi[32..43], b"..         ");
    assert_eq!(u16_at(&efi, 32 + 26), 0);
    assert_eq!(&efi[64..75], b"BOOT       ");
    let boot = bytes_at(f, data_at + 1024, 512);
    assert_eq!(&boot[32..43], b"..         ");
    assert_eq!(u16_at(&boot, 32 + 26), 3, "BOOT's parent is EFI");
    assert_eq!(&boot[64..75], b"BOOTX64 EFI");

    let path = tmp.path().to_str().unwrap().to_owned();
    if let Some(out) = run("sfdisk", &["-d", &path]) {
        let dump = String::from_utf8_lossy(&out.stdout);
        assert!(dump.contains("type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), "{dump}");
        assert!(dump.contains("name=\"EFI System Partition\""), "{dump}");
    }
    if let Some(out) = run("sfdisk", &["--verify", &path]) {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let part = tempfile::NamedTempFile::new().unwrap();
    let size = disk.size - 2 * MIB;
    let chunk = bytes_at(tmp.as_file_mut(), MIB, usize::try_from(size).unwrap());
    std::fs::write(part.path(), chunk).unwrap();
    if let Some(out) = run("fsck.fat", &["-n", "-v", part.path().to_str().unwrap()]) {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("differ"), "{text}");
    }
    let image = format!("{path}@@1M");
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("uki.efi");
    if let Some(out) = run(
        "mcopy",
        &["-n", "-i", &image, "::EFI/BOOT/BOOTX64.EFI", target.to_str().unwrap()],
    ) {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(&target).unwrap(), specs[0].1, "BOOTX64.EFI via mcopy");
    }
}

#[test]
fn esp_disks_are_deterministic_and_refuse_clashing_paths() {
    let specs = esp_specs();
    let (_, a, digest_a) = write_esp(&specs);
    let (_, b, digest_b) = write_esp(&specs);
    assert_eq!((a, digest_a), (b, digest_b));
    let mut other = specs.clone();
    other[2].1[0] ^= 1;
    assert_ne!(write_esp(&other).2, digest_a);

    for bad in [
        vec![("EFI", vec![1]), ("EFI/BOOT/X", vec![2])],
        vec![("EFI/x", vec![1]), ("efi/X", vec![2])],
        vec![("EFI//x", vec![1])],
        vec![("/x", vec![1])],
        vec![("EFI/../x", vec![1])],
    ] {
        let mut readers: Vec<&[u8]> = bad.iter().map(|(_, d)| d.as_slice()).collect();
        let mut tmp = tempfile::tempfile().unwrap();
        let err = write_esp_disk(&mut tmp, &SEED, "SAFEBOX", &mut esp_files(&bad, &mut readers)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {err}");
    }
}

/// Larger files move an ESP disk up in whole MiB and its clusters up to 4 KiB.
#[test]
fn esp_disk_sizes() {
    let size = |lens: &[u64]| {
        let names = ["EFI/BOOT/BOOTX64.EFI", "a", "b"];
        let files: Vec<(&str, u64)> = names.into_iter().zip(lens.iter().copied()).collect();
        esp_disk_size(&files).unwrap()
    };
    let small = size(&[10]);
    assert!((34 * MIB..=36 * MIB).contains(&small), "{small}");
    let hundred = size(&[100 * MIB, 5000, 700]);
    assert!(hundred > 102 * MIB && hundred <= 104 * MIB, "{hundred}");
    let layout = Layout::for_size(hundred).unwrap();
    assert_eq!(layout.sectors_per_cluster, 2);
    let big = size(&[900 * MIB]);
    assert_eq!(Layout::for_size(big).unwrap().sectors_per_cluster, 8);
    for mib in 30..200 {
        if let Some(layout) = Layout::for_size(mib * MIB) {
            assert!(layout.cluster_count >= MIN_CLUSTERS, "{mib} MiB");
        }
    }
}
