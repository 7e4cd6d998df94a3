//! The Nitro Enclave Image File (EIF) format, version 4, as AWS's
//! `aws-nitro-enclaves-image-format` defines it.
//!
//! Layout, all integers big-endian: a 548-byte header (magic `.eif`, version, flags, default
//! memory and CPUs, section count, 32 section offsets, 32 section sizes, a CRC-32 of
//! everything but itself), then sections in the order kernel, cmdline, metadata, ramdisks,
//! each a 12-byte section header (type, flags, size) and its data. PCRs measure section data:
//! PCR0 kernel, cmdline and every ramdisk; PCR1 kernel, cmdline and the first ramdisk; PCR2
//! the other ramdisks; each PCR is SHA-384(48 zero bytes || SHA-384(measured bytes)).

use std::io::{self, Read, Seek, SeekFrom};

use openssl::sha::{Sha256, Sha384};
use serde::Serialize;

/// `.eif`
pub const MAGIC: [u8; 4] = *b".eif";
/// The format version written.
pub const VERSION: u16 = 4;
/// Size of the file header.
pub const HEADER_SIZE: usize = 548;
/// Size of a section header.
pub const SECTION_HEADER_SIZE: usize = 12;
/// Most sections a file can have.
pub const MAX_SECTIONS: usize = 32;
/// The default enclave memory recorded in the header (the reference builder's value).
const DEFAULT_MEM: u64 = 1 << 30;
/// The default enclave CPU count recorded in the header.
const DEFAULT_CPUS: u64 = 2;
/// A PCR starts as 48 zero bytes and is extended once with the measurement.
const PCR_ZEROS: [u8; 48] = [0; 48];

/// A section's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    /// The kernel image.
    Kernel,
    /// The kernel command line.
    Cmdline,
    /// An initramfs archive.
    Ramdisk,
    /// A signature over the PCRs.
    Signature,
    /// Build metadata (JSON).
    Metadata,
}

impl SectionKind {
    fn code(self) -> u16 {
        match self {
            Self::Kernel => 1,
            Self::Cmdline => 2,
            Self::Ramdisk => 3,
            Self::Signature => 4,
            Self::Metadata => 5,
        }
    }

    fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => Self::Kernel,
            2 => Self::Cmdline,
            3 => Self::Ramdisk,
            4 => Self::Signature,
            5 => Self::Metadata,
            _ => return None,
        })
    }
}

/// A section's type, size and the CRC-32 of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionLayout {
    /// The type.
    pub kind: SectionKind,
    /// Data length.
    pub size: u64,
    /// CRC-32 (IEEE) of the data.
    pub crc: u32,
}

/// The 12-byte header before a section's data.
#[must_use]
pub fn section_header(kind: SectionKind, size: u64) -> [u8; SECTION_HEADER_SIZE] {
    let mut out = [0; SECTION_HEADER_SIZE];
    out[0..2].copy_from_slice(&kind.code().to_be_bytes());
    out[4..12].copy_from_slice(&size.to_be_bytes());
    out
}

/// The file header for `sections` in file order, with offsets and the CRC computed.
///
/// # Errors
/// More sections than the format holds.
pub fn file_header(sections: &[SectionLayout]) -> io::Result<[u8; HEADER_SIZE]> {
    if sections.len() > MAX_SECTIONS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("an EIF holds at most {MAX_SECTIONS} sections"),
        ));
    }
    let mut out = [0u8; HEADER_SIZE];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_be_bytes());
    // flags (6..8) stay 0: x86_64.
    out[8..16].copy_from_slice(&DEFAULT_MEM.to_be_bytes());
    out[16..24].copy_from_slice(&DEFAULT_CPUS.to_be_bytes());
    // reserved (24..26) stays 0.
    out[26..28].copy_from_slice(&u16::try_from(sections.len()).unwrap_or(u16::MAX).to_be_bytes());
    let mut offset = HEADER_SIZE as u64;
    for (i, section) in sections.iter().enumerate() {
        out[28 + i * 8..36 + i * 8].copy_from_slice(&offset.to_be_bytes());
        out[284 + i * 8..292 + i * 8].copy_from_slice(&section.size.to_be_bytes());
        offset += SECTION_HEADER_SIZE as u64 + section.size;
    }
    // unused (540..544) stays 0; the CRC covers everything before it is stored.
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[..HEADER_SIZE - 4]);
    for section in sections {
        crc.update(&section_header(section.kind, section.size));
        crc.combine(&crc32fast::Hasher::new_with_initial_len(section.crc, section.size));
    }
    out[HEADER_SIZE - 4..].copy_from_slice(&crc.finalize().to_be_bytes());
    Ok(out)
}

/// Finishes a PCR from the SHA-384 of its measured bytes.
#[must_use]
pub fn pcr(measured: &[u8; 48]) -> [u8; 48] {
    let mut extend = Sha384::new();
    extend.update(&PCR_ZEROS);
    extend.update(measured);
    extend.finish()
}

/// The metadata section: build information derived from the manifest only, so the whole
/// file is reproducible. The shape is the reference builder's `EifIdentityInfo`.
#[must_use]
pub fn metadata(name: &str, epoch: i64, prod_inputs_digest: &str, kernel_sha256: &str) -> Vec<u8> {
    let build_time = time::OffsetDateTime::from_unix_timestamp(epoch)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let info = serde_json::json!({
        "ImageName": name,
        "ImageVersion": prod_inputs_digest,
        "BuildMetadata": {
            "BuildTime": build_time,
            "BuildTool": "safebox",
            "BuildToolVersion": "safebox-eif-1",
            "OperatingSystem": "linux",
            "KernelVersion": format!("sha256:{kernel_sha256}"),
        },
        "DockerInfo": {},
        "CustomMetadata": {},
    });
    serde_json::to_vec(&info).unwrap_or_default()
}

/// What [`Eif::parse`] found wrong.
#[derive(Debug, thiserror::Error)]
pub enum EifError {
    /// Not an EIF.
    #[error("not an EIF file: {0}")]
    Format(String),
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One section of a parsed file.
#[derive(Debug, Clone, Serialize)]
pub struct SectionInfo {
    /// The type.
    pub kind: SectionKind,
    /// Where its header starts.
    pub offset: u64,
    /// Data length.
    pub size: u64,
    /// SHA-256 of the data, hex.
    pub sha256: String,
}

/// PCRs recomputed from a file's sections, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pcrs {
    /// Kernel, cmdline, every ramdisk.
    pub pcr0: String,
    /// Kernel, cmdline, first ramdisk.
    pub pcr1: String,
    /// The other ramdisks.
    pub pcr2: String,
}

/// A parsed EIF: its sections, recomputed PCRs and whether the stored CRC matches.
#[derive(Debug, Clone, Serialize)]
pub struct Eif {
    /// Format version.
    pub version: u16,
    /// The sections in file order.
    pub sections: Vec<SectionInfo>,
    /// PCRs recomputed from the sections.
    pub pcrs: Pcrs,
    /// Whether the header's CRC-32 matches the contents.
    pub crc_ok: bool,
    /// The metadata section, when it is JSON.
    pub metadata: Option<serde_json::Value>,
}

impl Eif {
    /// Reads and checks a whole file, recomputing PCRs and section digests.
    ///
    /// # Errors
    /// [`EifError::Format`] naming what does not fit the format.
    pub fn parse(mut file: impl Read + Seek) -> Result<Self, EifError> {
        let length = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact(&mut header)
            .map_err(|_| EifError::Format(format!("shorter than the {HEADER_SIZE}-byte header")))?;
        if header[0..4] != MAGIC {
            return Err(EifError::Format("the magic is not \".eif\"".into()));
        }
        let u16_at = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap_or_default());
        let version = u16_at(4);
        let count = usize::from(u16_at(26));
        if count > MAX_SECTIONS {
            return Err(EifError::Format(format!("{count} sections, more than {MAX_SECTIONS}")));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[..HEADER_SIZE - 4]);
        let mut image = Sha384::new();
        let mut boot = Sha384::new();
        let mut app = Sha384::new();
        let mut ramdisks = 0usize;
        let mut sections = Vec::with_capacity(count);
        let mut metadata = None;
        let mut buffer = vec![0u8; 1 << 20];
        for i in 0..count {
            let (offset, size) = (u64_at(28 + i * 8), u64_at(284 + i * 8));
            let fits = offset
                .checked_add(SECTION_HEADER_SIZE as u64)
                .and_then(|o| o.checked_add(size))
                .is_some_and(|end| end <= length);
            if !fits {
                return Err(EifError::Format(format!("section {i} runs past the end of the file")));
            }
            file.seek(SeekFrom::Start(offset))?;
            let mut section_header = [0u8; SECTION_HEADER_SIZE];
            file.read_exact(&mut section_header)?;
            crc.update(&section_header);
            let kind = SectionKind::from_code(u16::from_be_bytes([section_header[0], section_header[1]]))
                .ok_or_else(|| EifError::Format(format!("section {i} has an unknown type")))?;
            if u64::from_be_bytes(section_header[4..12].try_into().unwrap_or_default()) != size {
                return Err(EifError::Format(format!(
                    "section {i}'s header disagrees with the file header about its size"
                )));
            }
            let first_ramdisk = kind == SectionKind::Ramdisk && ramdisks == 0;
            if kind == SectionKind::Ramdisk {
                ramdisks += 1;
            }
            let mut digest = Sha256::new();
            let mut meta = Vec::new();
            let mut left = size;
            while left > 0 {
                let n = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
                file.read_exact(&mut buffer[..n])?;
                let chunk = &buffer[..n];
                digest.update(chunk);
                crc.update(chunk);
                match kind {
                    SectionKind::Kernel | SectionKind::Cmdline => {
                        image.update(chunk);
                        boot.update(chunk);
                    }
                    SectionKind::Ramdisk => {
                        image.update(chunk);
                        if first_ramdisk {
                            boot.update(chunk);
                        } else {
                            app.update(chunk);
                        }
                    }
                    SectionKind::Metadata if meta.len() < (1 << 20) => meta.extend_from_slice(chunk),
                    SectionKind::Metadata | SectionKind::Signature => {}
                }
                left -= n as u64;
            }
            if kind == SectionKind::Metadata {
                metadata = serde_json::from_slice(&meta).ok();
            }
            sections.push(SectionInfo {
                kind,
                offset,
                size,
                sha256: hex::encode(digest.finish()),
            });
        }
        let stored_crc = u32::from_be_bytes(header[HEADER_SIZE - 4..].try_into().unwrap_or_default());
        Ok(Self {
            version,
            sections,
            pcrs: Pcrs {
                pcr0: hex::encode(pcr(&image.finish())),
                pcr1: hex::encode(pcr(&boot.finish())),
                pcr2: hex::encode(pcr(&app.finish())),
            },
            crc_ok: crc.finalize() == stored_crc,
            metadata,
        })
    }
}
