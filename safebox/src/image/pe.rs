//! The parts of PE/COFF (Microsoft "PE Format" specification) that a Unified Kernel Image
//! needs: reading an x86-64 EFI image's headers, the optional header's `CheckSum`, and the
//! Authenticode digest that UEFI firmware measures into the TPM.
//!
//! # Offsets used (PE32+ only: every x86-64 EFI image is PE32+)
//!
//! - DOS header: `e_lfanew` (u32 at 0x3C) is the offset of the `PE\0\0` signature.
//! - COFF header, 20 bytes after the signature: `Machine` (+0, 0x8664 for x86-64),
//!   `NumberOfSections` (+2), `TimeDateStamp` (+4), `PointerToSymbolTable` (+8),
//!   `NumberOfSymbols` (+12), `SizeOfOptionalHeader` (+16), `Characteristics` (+18).
//! - Optional header (PE32+, magic 0x20B): `SizeOfInitializedData` (+8), `SectionAlignment`
//!   (+32), `FileAlignment` (+36), `SizeOfImage` (+56), `SizeOfHeaders` (+60), `CheckSum` (+64),
//!   `Subsystem` (+68, 10 = EFI application), `NumberOfRvaAndSizes` (+108), then the data
//!   directories, 8 bytes each from +112; the certificate table is directory 4 (+144) and holds a
//!   *file offset*, not an RVA.
//! - Section headers, 40 bytes each, follow the optional header: `Name` (+0, 8 bytes),
//!   `VirtualSize` (+8), `VirtualAddress` (+12), `SizeOfRawData` (+16), `PointerToRawData`
//!   (+20), `Characteristics` (+36).
//!
//! # CheckSum
//!
//! The 16-bit ones'-complement sum (end-around carry) of the file read as little-endian 16-bit
//! words, the `CheckSum` field counted as zero and an odd final byte padded with a zero, plus
//! the file length. Ones'-complement sums do not depend on grouping (RFC 1071 §2), so a file's
//! sum is assembled from its parts' sums ([`Sum16`]), each part's bytes swapped when it starts
//! at an odd offset.
//!
//! # Authenticode digest
//!
//! As in "Windows Authenticode Portable Executable Signature Format" (§ "Calculating the PE
//! Image Hash") and EDK II's `HashPeImage`, which is what UEFI firmware extends into PCR4: hash
//! the first `SizeOfHeaders` bytes except the `CheckSum` field and the certificate-table
//! directory entry; then every section with raw data, in `PointerToRawData` order,
//! `SizeOfRawData` bytes each; then, if the file is longer than the bytes hashed so far
//! (`SizeOfHeaders` plus every `SizeOfRawData`), the file from that offset to its end less the
//! certificate table's size.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use openssl::sha::Sha384;

/// `IMAGE_FILE_MACHINE_AMD64`.
pub const MACHINE_X86_64: u16 = 0x8664;
/// The PE32+ optional header magic.
pub const MAGIC_PE32_PLUS: u16 = 0x20B;
/// `IMAGE_SUBSYSTEM_EFI_APPLICATION`.
pub const SUBSYSTEM_EFI_APPLICATION: u16 = 10;
/// Size of one section header.
pub const SECTION_HEADER_SIZE: usize = 40;
/// Offset of `CheckSum` in the optional header.
pub const CHECKSUM_OFFSET: usize = 64;
/// Offset of the certificate-table directory entry in a PE32+ optional header.
pub const CERT_DIRECTORY_OFFSET: usize = 112 + 4 * 8;
/// The certificate table's index among the data directories.
const CERT_DIRECTORY_INDEX: u32 = 4;
/// Offset of `SizeOfOptionalHeader` in the COFF header (after the signature).
const COFF_OPTIONAL_SIZE: usize = 16;
/// The COFF header's size, after the 4-byte signature.
const COFF_SIZE: usize = 20;
/// The smallest PE32+ optional header that reaches `NumberOfRvaAndSizes`.
const MIN_OPTIONAL_SIZE: usize = 112;
/// Bounds what is read before trusting the headers: real headers are a few KiB.
const MAX_HEADERS: u32 = 1 << 20;

/// Why bytes are not an image this module handles.
#[derive(Debug, thiserror::Error)]
pub enum PeError {
    /// The bytes break the format, or use a part of it UKIs do not.
    #[error("{0}")]
    Format(String),
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn format_error(message: impl Into<String>) -> PeError {
    PeError::Format(message.into())
}

/// Little-endian readers over a byte slice; out-of-range reads are format errors.
pub(crate) fn le16(bytes: &[u8], at: usize) -> Result<u16, PeError> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| format_error(format!("the headers end before offset {at:#x}")))
}

pub(crate) fn le32(bytes: &[u8], at: usize) -> Result<u32, PeError> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format_error(format!("the headers end before offset {at:#x}")))
}

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name, NUL-padded to 8 bytes.
    pub name: [u8; 8],
    /// Bytes the section occupies in memory (the data length, for UKI sections).
    pub virtual_size: u32,
    /// Where it is loaded, relative to the image base.
    pub virtual_address: u32,
    /// Bytes in the file, a multiple of `FileAlignment`.
    pub size_of_raw_data: u32,
    /// Where its bytes are in the file.
    pub pointer_to_raw_data: u32,
    /// The 40 bytes as read (for fields this module does not interpret).
    pub raw: [u8; SECTION_HEADER_SIZE],
}

impl Section {
    /// The name without NUL padding.
    #[must_use]
    pub fn name_str(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(8);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    /// The file range of its raw data.
    #[must_use]
    pub fn raw_range(&self) -> Range<u64> {
        let start = u64::from(self.pointer_to_raw_data);
        start..start + u64::from(self.size_of_raw_data)
    }

    /// Its data in `file`: the smaller of `VirtualSize` and `SizeOfRawData` bytes from its file
    /// offset; `None` when they lie beyond the end of the file.
    #[must_use]
    pub fn data<'f>(&self, file: &'f [u8]) -> Option<&'f [u8]> {
        let start = self.pointer_to_raw_data as usize;
        let len = self.virtual_size.min(self.size_of_raw_data) as usize;
        file.get(start..start.checked_add(len)?)
    }
}

/// The headers of an x86-64 (PE32+) image, as read from its first `SizeOfHeaders` bytes.
#[derive(Debug, Clone)]
pub struct PeHeaders {
    /// The first `SizeOfHeaders` bytes of the file.
    pub bytes: Vec<u8>,
    /// Offset of the COFF header (after the `PE\0\0` signature).
    pub coff: usize,
    /// Offset of the optional header.
    pub optional: usize,
    /// Offset of the section table.
    pub section_table: usize,
    /// `SectionAlignment`.
    pub section_alignment: u32,
    /// `FileAlignment`.
    pub file_alignment: u32,
    /// `SizeOfImage`.
    pub size_of_image: u32,
    /// `SizeOfHeaders`.
    pub size_of_headers: u32,
    /// `Subsystem`.
    pub subsystem: u16,
    /// `NumberOfRvaAndSizes`.
    pub directories: u32,
    /// The certificate table's file offset and size, `(0, 0)` when absent.
    pub certificates: (u32, u32),
    /// The section headers in table order.
    pub sections: Vec<Section>,
}

impl PeHeaders {
    /// Reads and checks the headers of an x86-64 PE32+ image.
    ///
    /// # Errors
    /// [`PeError::Format`] naming the field that is out of place.
    pub fn read(file: &mut (impl Read + Seek)) -> Result<Self, PeError> {
        file.seek(SeekFrom::Start(0))?;
        let mut dos = [0u8; 64];
        file.read_exact(&mut dos)
            .map_err(|_| format_error("it is shorter than a DOS header"))?;
        if &dos[..2] != b"MZ" {
            return Err(format_error("it does not start with \"MZ\": not a PE/COFF image"));
        }
        let pe = le32(&dos, 0x3C)?;
        if pe > MAX_HEADERS {
            return Err(format_error("e_lfanew points beyond any plausible header"));
        }
        let mut fixed = vec![0u8; pe as usize + 4 + COFF_SIZE + MIN_OPTIONAL_SIZE];
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut fixed)
            .map_err(|_| format_error("it ends inside its PE headers"))?;
        let pe = pe as usize;
        if &fixed[pe..pe + 4] != b"PE\0\0" {
            return Err(format_error("there is no \"PE\\0\\0\" signature at e_lfanew"));
        }
        let coff = pe + 4;
        let optional = coff + COFF_SIZE;
        let machine = le16(&fixed, coff)?;
        if machine != MACHINE_X86_64 {
            return Err(format_error(format!(
                "its machine is {machine:#06x}, not x86-64 ({MACHINE_X86_64:#06x})"
            )));
        }
        if le16(&fixed, optional)? != MAGIC_PE32_PLUS {
            return Err(format_error("its optional header is not PE32+"));
        }
        let size_of_headers = le32(&fixed, optional + 60)?;
        if size_of_headers > MAX_HEADERS || (size_of_headers as usize) < fixed.len() {
            return Err(format_error(format!(
                "SizeOfHeaders {size_of_headers:#x} is implausible"
            )));
        }
        let mut bytes = vec![0u8; size_of_headers as usize];
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut bytes)
            .map_err(|_| format_error("it ends before SizeOfHeaders"))?;
        let optional_size = usize::from(le16(&bytes, coff + COFF_OPTIONAL_SIZE)?);
        let directories = le32(&bytes, optional + 108)?;
        if optional_size < MIN_OPTIONAL_SIZE + 8 * directories as usize {
            return Err(format_error("SizeOfOptionalHeader does not hold its data directories"));
        }
        let certificates = if directories > CERT_DIRECTORY_INDEX {
            (
                le32(&bytes, optional + CERT_DIRECTORY_OFFSET)?,
                le32(&bytes, optional + CERT_DIRECTORY_OFFSET + 4)?,
            )
        } else {
            (0, 0)
        };
        let section_table = optional + optional_size;
        let count = usize::from(le16(&bytes, coff + 2)?);
        let mut sections = Vec::with_capacity(count);
        for index in 0..count {
            let at = section_table + index * SECTION_HEADER_SIZE;
            let raw: [u8; SECTION_HEADER_SIZE] = bytes
                .get(at..at + SECTION_HEADER_SIZE)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format_error("the section table runs past SizeOfHeaders"))?;
            let mut name = [0u8; 8];
            name.copy_from_slice(&raw[..8]);
            sections.push(Section {
                name,
                virtual_size: le32(&raw, 8)?,
                virtual_address: le32(&raw, 12)?,
                size_of_raw_data: le32(&raw, 16)?,
                pointer_to_raw_data: le32(&raw, 20)?,
                raw,
            });
        }
        Ok(Self {
            coff,
            optional,
            section_table,
            section_alignment: le32(&bytes, optional + 32)?,
            file_alignment: le32(&bytes, optional + 36)?,
            size_of_image: le32(&bytes, optional + 56)?,
            size_of_headers,
            subsystem: le16(&bytes, optional + 68)?,
            directories,
            certificates,
            sections,
            bytes,
        })
    }

    /// The section called `name`, if any.
    #[must_use]
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name_str() == name)
    }

    /// The byte ranges of the headers that Authenticode leaves out: `CheckSum` and the
    /// certificate-table directory entry (when the image has one).
    #[must_use]
    pub fn authenticode_holes(&self) -> Vec<Range<usize>> {
        let checksum = self.optional + CHECKSUM_OFFSET;
        let mut holes = Vec::with_capacity(2);
        holes.push(checksum..checksum + 4);
        if self.directories > CERT_DIRECTORY_INDEX {
            let cert = self.optional + CERT_DIRECTORY_OFFSET;
            holes.push(cert..cert + 8);
        }
        holes
    }
}

/// A running 16-bit ones'-complement sum over bytes that start at an even file offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sum16 {
    /// The folded sum.
    pub sum: u16,
    /// How many bytes it covers.
    pub len: u64,
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    // Only all-zero input folds to 0 (RFC 1071), so this cannot lose information.
    sum as u16
}

impl Sum16 {
    /// The sum of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        let mut sum = Self::default();
        sum.update(bytes);
        sum
    }

    /// Adds `bytes`, which follow the bytes summed so far.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        let mut acc = 0u64;
        if self.len % 2 == 1 {
            if let Some((&first, tail)) = rest.split_first() {
                // The high byte of the word whose low byte ended the previous update.
                acc += u64::from(first) << 8;
                rest = tail;
            }
        }
        let mut words = rest.chunks_exact(8);
        for chunk in &mut words {
            let q = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            // Four 16-bit words summed in 64 bits: 2^46 chunks before the accumulator could carry out.
            acc += (q & 0xFFFF) + ((q >> 16) & 0xFFFF) + ((q >> 32) & 0xFFFF) + (q >> 48);
        }
        let tail = words.remainder();
        let mut pairs = tail.chunks_exact(2);
        for pair in &mut pairs {
            acc += u64::from(u16::from_le_bytes([pair[0], pair[1]]));
        }
        if let [last] = pairs.remainder() {
            acc += u64::from(*last);
        }
        self.sum = fold(u64::from(self.sum) + acc);
        self.len += bytes.len() as u64;
    }

    /// The sum of these bytes followed by `next`'s.
    #[must_use]
    pub fn then(self, next: Self) -> Self {
        let added = if self.len % 2 == 1 {
            next.sum.swap_bytes()
        } else {
            next.sum
        };
        Self {
            sum: fold(u64::from(self.sum) + u64::from(added)),
            len: self.len + next.len,
        }
    }

    /// `len` zero bytes.
    #[must_use]
    pub fn zeros(len: u64) -> Self {
        Self { sum: 0, len }
    }

    /// The PE `CheckSum` of a whole file with this sum (its `CheckSum` field counted as zero).
    #[must_use]
    pub fn pe_checksum(self) -> u32 {
        // The file length is added modulo 2^32, as the field holds.
        u32::from(self.sum).wrapping_add(self.len as u32)
    }
}

/// Streams an image whose bytes are exactly headers-then-sections-in-file-order (no gaps,
/// no trailing data, no certificates, as [`super::uki`] writes them) into a SHA-384, leaving
/// out `holes`: that is its Authenticode digest.
pub struct AuthenticodeStream {
    hasher: Sha384,
    position: u64,
    holes: Vec<Range<u64>>,
}

impl AuthenticodeStream {
    /// A stream that leaves out `holes` (sorted file ranges).
    #[must_use]
    pub fn new(holes: Vec<Range<u64>>) -> Self {
        Self {
            hasher: Sha384::new(),
            position: 0,
            holes,
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        let start = self.position;
        let end = start + bytes.len() as u64;
        let mut at = start;
        for hole in &self.holes {
            if hole.end <= at || hole.start >= end {
                continue;
            }
            if hole.start > at {
                self.hasher
                    .update(&bytes[(at - start) as usize..(hole.start - start) as usize]);
            }
            at = hole.end.min(end);
        }
        if at < end {
            self.hasher.update(&bytes[(at - start) as usize..]);
        }
        self.position = end;
    }

    /// The digest.
    #[must_use]
    pub fn finish(self) -> [u8; 48] {
        self.hasher.finish()
    }
}

/// The Authenticode SHA-384 of any x86-64 image, read by offset as firmware does.
///
/// # Errors
/// [`PeError::Format`] if a section or the certificate table lies outside the file.
pub fn authenticode_sha384(file: &mut (impl Read + Seek)) -> Result<[u8; 48], PeError> {
    let headers = PeHeaders::read(file)?;
    let length = file.seek(SeekFrom::End(0))?;
    let mut stream = AuthenticodeStream::new(
        headers
            .authenticode_holes()
            .into_iter()
            .map(|r| r.start as u64..r.end as u64)
            .collect(),
    );
    stream.update(&headers.bytes);
    let mut sections: Vec<&Section> = headers.sections.iter().filter(|s| s.size_of_raw_data > 0).collect();
    sections.sort_by_key(|s| s.pointer_to_raw_data);
    let mut hashed = u64::from(headers.size_of_headers);
    let mut buffer = vec![0u8; 1 << 20];
    let mut copy = |file: &mut dyn ReadSeek, range: Range<u64>, hasher: &mut Sha384| -> Result<(), PeError> {
        if range.end > length {
            return Err(format_error(format!(
                "bytes {range:?} lie beyond the end of the file ({length} bytes)"
            )));
        }
        file.seek(SeekFrom::Start(range.start))?;
        let mut left = range.end - range.start;
        while left > 0 {
            let n = usize::try_from(left).map_or(buffer.len(), |l| l.min(buffer.len()));
            file.read_exact(&mut buffer[..n])?;
            hasher.update(&buffer[..n]);
            left -= n as u64;
        }
        Ok(())
    };
    for section in sections {
        copy(file, section.raw_range(), &mut stream.hasher)?;
        hashed += u64::from(section.size_of_raw_data);
    }
    let certificates = u64::from(headers.certificates.1);
    if length > hashed + certificates {
        copy(file, hashed..length - certificates, &mut stream.hasher)?;
    }
    Ok(stream.finish())
}

/// `Read + Seek` as one object type, for the copy helper above.
trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The PE checksum computed word by word, as the specification states it.
    pub(crate) fn checksum_by_words(file: &[u8], checksum_at: usize) -> u32 {
        let mut bytes = file.to_vec();
        bytes[checksum_at..checksum_at + 4].fill(0);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum = 0u32;
        for pair in bytes.chunks_exact(2) {
            sum += u32::from(u16::from_le_bytes([pair[0], pair[1]]));
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        sum + file.len() as u32
    }

    fn noise(len: usize, salt: u64) -> Vec<u8> {
        let mut state = 0x2545_F491_4F6C_DD1Du64 ^ salt;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn sums_of_parts_equal_the_sum_of_the_whole_at_any_split() {
        let data = noise(1001, 3);
        let whole = Sum16::of(&data);
        for cuts in [[0, 1, 2], [1, 2, 3], [3, 500, 999], [7, 8, 1000], [0, 0, 1001]] {
            let parts = [
                &data[..cuts[0]],
                &data[cuts[0]..cuts[1]],
                &data[cuts[1]..cuts[2]],
                &data[cuts[2]..],
            ];
            let combined = parts.iter().fold(Sum16::default(), |acc, p| acc.then(Sum16::of(p)));
            assert_eq!(combined, whole, "{cuts:?}");
            let mut streamed = Sum16::default();
            for p in parts {
                streamed.update(p);
            }
            assert_eq!(streamed, whole, "{cuts:?}");
        }
        // The word-by-word definition (no CheckSum field: place one at an all-zero spot).
        let mut file = data.clone();
        file[100..104].fill(0);
        assert_eq!(Sum16::of(&file).pe_checksum(), checksum_by_words(&file, 100));
        // All-ones words fold to 0xFFFF, never to 0.
        assert_eq!(Sum16::of(&[0xFF; 6]).sum, 0xFFFF);
        assert_eq!(Sum16::zeros(9).then(Sum16::of(b"\x01")), Sum16 { sum: 0x0100, len: 10 });
    }

    #[test]
    fn authenticode_stream_skips_holes_across_chunk_boundaries() {
        let data = noise(300, 9);
        let holes = vec![10..14, 50..58];
        let mut expected = Sha384::new();
        expected.update(&data[..10]);
        expected.update(&data[14..50]);
        expected.update(&data[58..]);
        let expected = expected.finish();
        for chunk in [1, 3, 7, 13, 64, 300] {
            let mut stream = AuthenticodeStream::new(holes.clone());
            for piece in data.chunks(chunk) {
                stream.update(piece);
            }
            assert_eq!(stream.finish(), expected, "chunks of {chunk}");
        }
    }

    /// A minimal x86-64 EFI image: [`HEADERS`] bytes of headers, two sections, optional certificate
    /// table and trailing bytes.
    /// The header size of [`tiny_image`]: room for eight section headers.
    pub(crate) const HEADERS: usize = 0x400;

    pub(crate) fn tiny_image(sections: &[(&str, &[u8])], trailing: &[u8], certificate: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; HEADERS];
        image[..2].copy_from_slice(b"MZ");
        image[0x3C..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        image[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        image[coff..coff + 2].copy_from_slice(&MACHINE_X86_64.to_le_bytes());
        image[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        image[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        image[opt..opt + 2].copy_from_slice(&MAGIC_PE32_PLUS.to_le_bytes());
        image[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        image[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes());
        image[opt + 60..opt + 64].copy_from_slice(&(HEADERS as u32).to_le_bytes());
        image[opt + 64..opt + 68].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        image[opt + 68..opt + 70].copy_from_slice(&SUBSYSTEM_EFI_APPLICATION.to_le_bytes());
        image[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let table = opt + 240;
        let mut va = 0x1000u32;
        let mut raw = Vec::new();
        for (index, (name, data)) in sections.iter().enumerate() {
            let at = table + index * 40;
            image[at..at + name.len()].copy_from_slice(name.as_bytes());
            let raw_size = data.len().next_multiple_of(0x200) as u32;
            image[at + 8..at + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
            image[at + 12..at + 16].copy_from_slice(&va.to_le_bytes());
            image[at + 16..at + 20].copy_from_slice(&raw_size.to_le_bytes());
            image[at + 20..at + 24].copy_from_slice(&((HEADERS + raw.len()) as u32).to_le_bytes());
            va += raw_size.next_multiple_of(0x1000);
            raw.extend_from_slice(data);
            raw.resize(raw.len().next_multiple_of(0x200), 0);
        }
        image[opt + 56..opt + 60].copy_from_slice(&va.to_le_bytes());
        image.extend_from_slice(&raw);
        image.extend_from_slice(trailing);
        if !certificate.is_empty() {
            let at = image.len() as u32;
            image[opt + 144..opt + 148].copy_from_slice(&at.to_le_bytes());
            image[opt + 148..opt + 152].copy_from_slice(&(certificate.len() as u32).to_le_bytes());
            image.extend_from_slice(certificate);
        }
        image
    }

    #[test]
    fn authenticode_leaves_out_checksum_certificate_entry_and_table() {
        let text = noise(700, 1);
        let data = noise(10, 2);
        let plain = tiny_image(&[(".text", &text), (".data", &data)], b"", b"");
        let signed = tiny_image(&[(".text", &text), (".data", &data)], b"", b"SIGNATURE BLOB!!");
        let trailing = tiny_image(&[(".text", &text), (".data", &data)], b"trailing", b"SIGNATURE BLOB!!");
        let digest = |bytes: &[u8]| authenticode_sha384(&mut io::Cursor::new(bytes)).unwrap();

        // By hand: headers without CheckSum and the certificate directory
        // entry, then both sections' raw data (.text 0x400 bytes, .data 0x200).
        let opt = 0x44 + 20;
        let mut by_hand = Sha384::new();
        by_hand.update(&plain[..opt + 64]);
        by_hand.update(&plain[opt + 68..opt + 144]);
        by_hand.update(&plain[opt + 152..HEADERS + 0x600]);
        assert_eq!(digest(&plain), by_hand.finish());

        // A signature changes neither the digest nor, as a certificate, what is hashed.
        assert_eq!(digest(&signed), digest(&plain));
        // Bytes between the sections and the certificate table are hashed.
        assert_ne!(digest(&trailing), digest(&plain));
        let mut changed = plain.clone();
        changed[HEADERS + 0x100] ^= 1;
        assert_ne!(digest(&changed), digest(&plain));
        let mut checksum_only = plain.clone();
        checksum_only[opt + 64] ^= 0xFF;
        assert_eq!(digest(&checksum_only), digest(&plain));

        // The stream over the same bytes agrees.
        let headers = PeHeaders::read(&mut io::Cursor::new(&plain)).unwrap();
        let mut stream = AuthenticodeStream::new(
            headers
                .authenticode_holes()
                .into_iter()
                .map(|r| r.start as u64..r.end as u64)
                .collect(),
        );
        stream.update(&plain);
        assert_eq!(stream.finish(), digest(&plain));
    }

    #[test]
    fn refuses_what_is_not_an_x86_64_pe32_plus_image() {
        let good = tiny_image(&[(".text", b"x")], b"", b"");
        let read = |bytes: &[u8]| PeHeaders::read(&mut io::Cursor::new(bytes.to_vec()));
        assert!(read(&good).is_ok());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(read(&bad).unwrap_err().to_string().contains("MZ"));
        let mut bad = good.clone();
        bad[0x44] = 0x4C;
        bad[0x45] = 0x01;
        assert!(read(&bad).unwrap_err().to_string().contains("x86-64"));
        let mut bad = good.clone();
        bad[0x58] = 0x0B;
        bad[0x59] = 0x01;
        assert!(read(&bad).unwrap_err().to_string().contains("PE32+"));
        assert!(read(&good[..100]).is_err());
        let mut outside = good.clone();
        outside.truncate(HEADERS + 0x100);
        assert!(authenticode_sha384(&mut io::Cursor::new(outside)).is_err());
    }
}
