//! Unified Kernel Images, written deterministically from a systemd EFI stub.
//!
//! A UKI (UAPI Group "Unified Kernel Image" specification) is the stub, a PE/COFF EFI
//! application, with extra sections the stub reads at boot: `.osrel` (an os-release file),
//! `.cmdline` (the kernel command line), `.linux` (the kernel, itself an EFI PE image) and
//! `.initrd` (the initramfs). systemd-stub finds them by name in its own loaded image and uses
//! each section's `VirtualSize` as the data length.
//!
//! # Layout written
//!
//! Every byte is a function of the stub, the section contents and nothing else:
//!
//! - The stub's headers, with: `TimeDateStamp` 0; `PointerToSymbolTable` and
//!   `NumberOfSymbols` 0 (COFF symbols are deprecated in images; the stub's trailing symbol and
//!   string tables are dropped); `NumberOfSections` grown by the new sections and
//!   `SizeOfInitializedData` by their `SizeOfRawData`; `SizeOfImage` the end of the last section rounded up to
//!   `SectionAlignment`; `CheckSum` computed over the final file ([`super::pe`]). The new section
//!   headers follow the stub's in the header space the stub already has (`SizeOfHeaders` is kept;
//!   a stub without room for them is refused); the rest of the header space is zero.
//! - The stub's sections' raw data, unchanged and at unchanged offsets (they must be contiguous
//!   from `SizeOfHeaders`, as linkers write them).
//! - Then, in this order, `.osrel`, `.cmdline` (left out when the command line is empty),
//!   `.linux`, `.initrd`: each at the next `FileAlignment` file offset and the next 4 KiB virtual
//!   address after the previous section (page-aligned, so firmware can map them with page
//!   attributes), `VirtualSize` the exact data length, `SizeOfRawData` that rounded up to
//!   `FileAlignment` with zero padding, characteristics initialised read-only data
//!   (`0x40000040`).
//! - `.initrd` is the concatenation of its parts (newc archives, which Linux unpacks one after
//!   the other). It is last, so dropping its last part changes only the sizes, `SizeOfImage`,
//!   `SizeOfInitializedData` and `CheckSum`: that is the seal step from development to
//!   production image.
//!
//! No certificate table: a UKI that must boot under Secure Boot is signed after assembly.

use std::io::{self, Read};
use std::ops::Range;

use super::pe::{self, PeError, PeHeaders, Sum16, SECTION_HEADER_SIZE};

/// Virtual-address alignment of the sections added: one x86-64 page.
const PAGE: u32 = 4096;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`.
const READ_ONLY_DATA: u32 = 0x4000_0040;
/// The sections a UKI adds; a stub that already has one of them is not a bare stub.
pub const UKI_SECTIONS: [&str; 4] = [".osrel", ".cmdline", ".linux", ".initrd"];

/// The stub's version as its `.sdmagic` section states it (`#### LoaderInfo: systemd-stub
/// 252.39-1~deb12u2 ####`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubVersion {
    /// The major version (252).
    pub major: u32,
    /// The whole version string (`252.39-1~deb12u2`).
    pub text: String,
}

/// Why a file cannot be used as the boot stub.
#[derive(Debug, thiserror::Error)]
pub enum StubError {
    /// Not an x86-64 PE32+ image.
    #[error("is not an x86-64 EFI image ({0}); give systemd's linuxx64.efi.stub (Debian package systemd-boot-efi)")]
    NotPe(PeError),
    /// A PE image, but not a bare systemd stub this builder can assemble and predict.
    #[error("{0}")]
    Unsupported(String),
}

/// A checked systemd-stub: its bytes, headers and version.
#[derive(Debug, Clone)]
pub struct BootStub {
    bytes: Vec<u8>,
    headers: PeHeaders,
    /// End of the stub's last section's raw data: what is kept of the file.
    body_end: u32,
    version: StubVersion,
}

impl BootStub {
    /// Checks that `bytes` are a bare x86-64 systemd-stub EFI application this builder can turn
    /// into a UKI.
    ///
    /// # Errors
    /// [`StubError`] saying what is wrong and what to give instead.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, StubError> {
        let headers = PeHeaders::read(&mut io::Cursor::new(&bytes)).map_err(StubError::NotPe)?;
        let unsupported = |m: String| Err(StubError::Unsupported(m));
        if headers.subsystem != pe::SUBSYSTEM_EFI_APPLICATION {
            return unsupported(format!(
                "is a PE image of subsystem {}, not an EFI application (10); give linuxx64.efi.stub",
                headers.subsystem
            ));
        }
        if let Some(name) = UKI_SECTIONS.iter().find(|n| headers.section(n).is_some()) {
            return unsupported(format!(
                "already has a {name} section: it is a UKI, not a bare stub; give linuxx64.efi.stub"
            ));
        }
        if headers.certificates.1 != 0 {
            return unsupported(
                "is signed (it has a certificate table); give the unsigned stub: a UKI is signed after assembly"
                    .to_owned(),
            );
        }
        let fa = headers.file_alignment;
        if !fa.is_power_of_two() || !headers.section_alignment.is_power_of_two() || headers.section_alignment < fa {
            return unsupported(format!(
                "has FileAlignment {fa:#x} and SectionAlignment {:#x}; both must be powers of two, sections the larger",
                headers.section_alignment
            ));
        }
        let mut end = headers.size_of_headers;
        for section in &headers.sections {
            if section.size_of_raw_data == 0 {
                continue;
            }
            if section.pointer_to_raw_data != end || section.size_of_raw_data % fa != 0 {
                return unsupported(format!(
                    "section {} is not where a linker puts it (raw data at {:#x}, expected {end:#x}, size a multiple of {fa:#x})",
                    section.name_str(),
                    section.pointer_to_raw_data
                ));
            }
            end += section.size_of_raw_data;
        }
        if end as usize > bytes.len() {
            return unsupported("ends inside its own sections: the file is truncated".to_owned());
        }
        let table_end = headers.section_table + (headers.sections.len() + UKI_SECTIONS.len()) * SECTION_HEADER_SIZE;
        if table_end > headers.size_of_headers as usize {
            return unsupported(format!(
                "has no room in its headers for {} more section headers",
                UKI_SECTIONS.len()
            ));
        }
        let version = stub_version(&bytes, &headers).ok_or_else(|| {
            StubError::Unsupported(
                "has no \".sdmagic\" section naming a systemd-stub version, so its measurements cannot be predicted; give systemd's linuxx64.efi.stub"
                    .to_owned(),
            )
        })?;
        Ok(Self {
            bytes,
            headers,
            body_end: end,
            version,
        })
    }

    /// The stub's version.
    #[must_use]
    pub fn version(&self) -> &StubVersion {
        &self.version
    }
}

/// The systemd-stub version a stub or a UKI made from one states in its `.sdmagic` section.
pub(crate) fn stub_version(bytes: &[u8], headers: &PeHeaders) -> Option<StubVersion> {
    let magic = headers.section(".sdmagic")?;
    let text = std::str::from_utf8(magic.data(bytes)?).ok()?;
    let text = text.trim_end_matches('\0').trim();
    let version = text
        .strip_prefix("#### LoaderInfo: systemd-stub ")?
        .strip_suffix(" ####")?
        .to_owned();
    let major = version.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some(StubVersion { major, text: version })
}

/// Where a section's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes held by the layout (headers, stub sections, `.osrel`, `.cmdline`).
    Bytes(Range<usize>),
    /// The caller's part `index` (0 the kernel, then the initrd parts in order).
    Part(usize),
    /// Zero padding.
    Zeros(u64),
}

/// A part given by the caller: its length and ones'-complement sum.
pub type PartSum = Sum16;

/// The complete, computed layout of one UKI: its header bytes and the pieces that follow.
#[derive(Debug, Clone)]
pub struct UkiLayout {
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
    len: u64,
    holes: Vec<Range<u64>>,
    initrd: Range<u64>,
    initrd_index: usize,
}

fn align(value: u64, to: u32) -> u64 {
    value.next_multiple_of(u64::from(to))
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Why a layout cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("the UKI would be {0} bytes or larger; PE images hold at most 4 GiB")]
pub struct TooLarge(pub u64);

impl UkiLayout {
    /// The layout of a UKI from `stub`, `osrel`, `cmdline`, the kernel (`kernel`: length and
    /// sum of part 0) and the initrd parts (parts 1.., in order).
    ///
    /// # Errors
    /// [`TooLarge`] when the image would not fit PE's 32-bit fields.
    pub fn new(
        stub: &BootStub,
        osrel: &[u8],
        cmdline: &[u8],
        kernel: PartSum,
        initrd: &[PartSum],
    ) -> Result<Self, TooLarge> {
        let h = &stub.headers;
        let fa = h.file_alignment;
        // Bytes held: the stub up to its last section, then .osrel and .cmdline.
        let body_end = stub.body_end as usize;
        let mut bytes = stub.bytes[..body_end].to_vec();
        let osrel_at = bytes.len();
        bytes.extend_from_slice(osrel);
        let cmdline_at = bytes.len();
        bytes.extend_from_slice(cmdline);

        let initrd_sum = initrd.iter().fold(Sum16::default(), |acc, p| acc.then(*p));
        let mut sections: Vec<(&str, u64, Vec<Piece>, Sum16)> = vec![(
            ".osrel",
            osrel.len() as u64,
            vec![Piece::Bytes(osrel_at..cmdline_at)],
            Sum16::of(osrel),
        )];
        if !cmdline.is_empty() {
            sections.push((
                ".cmdline",
                cmdline.len() as u64,
                vec![Piece::Bytes(cmdline_at..bytes.len())],
                Sum16::of(cmdline),
            ));
        }
        sections.push((".linux", kernel.len, vec![Piece::Part(0)], kernel));
        sections.push((
            ".initrd",
            initrd_sum.len,
            (1..=initrd.len()).map(Piece::Part).collect(),
            initrd_sum,
        ));

        let mut header = stub.bytes[..h.size_of_headers as usize].to_vec();
        let table_end = h.section_table + h.sections.len() * SECTION_HEADER_SIZE;
        header[table_end..].fill(0);
        // The stub's image ends at SizeOfImage (or later, should a section claim more).
        let stub_end = h
            .sections
            .iter()
            .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.size_of_raw_data)))
            .fold(u64::from(h.size_of_image), u64::max);
        let mut va = align(stub_end, PAGE);
        let mut image_end = va;
        let mut offset = u64::from(stub.body_end);
        let mut added_raw = 0u64;
        let mut pieces = vec![Piece::Bytes(0..body_end)];
        let mut body_sum = Sum16::of(&stub.bytes[h.size_of_headers as usize..body_end]);
        let mut initrd_range = 0..0;
        for (index, (name, len, data, sum)) in sections.iter().enumerate() {
            let raw = align(*len, fa);
            let at = table_end + index * SECTION_HEADER_SIZE;
            let entry = &mut header[at..at + SECTION_HEADER_SIZE];
            entry[..name.len()].copy_from_slice(name.as_bytes());
            let field = |n: u64| u32::try_from(n).map_err(|_| TooLarge(n));
            put32(entry, 8, field(*len)?);
            put32(entry, 12, field(va)?);
            put32(entry, 16, field(raw)?);
            put32(entry, 20, if raw == 0 { 0 } else { field(offset)? });
            put32(entry, 36, READ_ONLY_DATA);
            pieces.extend(data.iter().cloned());
            if raw > *len {
                pieces.push(Piece::Zeros(raw - len));
            }
            if *name == ".initrd" {
                initrd_range = offset..offset + len;
            }
            body_sum = body_sum.then(*sum).then(Sum16::zeros(raw - len));
            offset += raw;
            added_raw += raw;
            image_end = va + len;
            va = align(image_end, PAGE);
        }
        let len = offset;
        u32::try_from(len).map_err(|_| TooLarge(len))?;
        let size_of_image = align(image_end, h.section_alignment);
        let size_of_image = u32::try_from(size_of_image).map_err(|_| TooLarge(size_of_image))?;

        // COFF header.
        let coff = h.coff;
        let count = u16::try_from(h.sections.len() + sections.len()).unwrap_or(u16::MAX);
        header[coff + 2..coff + 4].copy_from_slice(&count.to_le_bytes());
        put32(&mut header, coff + 4, 0);
        put32(&mut header, coff + 8, 0);
        put32(&mut header, coff + 12, 0);
        // Optional header.
        let opt = h.optional;
        let initialized = pe::le32(&header, opt + 8).unwrap_or(0);
        let initialized = u64::from(initialized) + added_raw;
        put32(
            &mut header,
            opt + 8,
            u32::try_from(initialized).map_err(|_| TooLarge(initialized))?,
        );
        put32(&mut header, opt + 56, size_of_image);
        put32(&mut header, opt + pe::CHECKSUM_OFFSET, 0);
        let checksum = Sum16::of(&header).then(body_sum).pe_checksum();
        put32(&mut header, opt + pe::CHECKSUM_OFFSET, checksum);

        bytes[..header.len()].copy_from_slice(&header);
        let holes = h
            .authenticode_holes()
            .into_iter()
            .map(|r| r.start as u64..r.end as u64)
            .collect();
        Ok(Self {
            bytes,
            pieces,
            len,
            holes,
            initrd: initrd_range,
            initrd_index: h.sections.len() + sections.len() - 1,
        })
    }

    /// The file length.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image is empty (never: it always holds the stub).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The header ranges Authenticode leaves out (for [`pe::AuthenticodeStream`]).
    #[must_use]
    pub fn authenticode_holes(&self) -> Vec<Range<u64>> {
        self.holes.clone()
    }

    /// Where the initrd's data lies in the file.
    #[must_use]
    pub fn initrd_range(&self) -> Range<u64> {
        self.initrd.clone()
    }

    /// The position of `.initrd` in the section table (it is the last section).
    #[must_use]
    pub fn initrd_section_index(&self) -> usize {
        self.initrd_index
    }

    /// The pieces in file order.
    #[must_use]
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The image's bytes as a reader; part `i` is read from `open(i)`, which returns the reader
    /// and its length, which must be what the layout was made with.
    pub fn reader<'l, 'r>(&'l self, open: Box<OpenPart<'r>>) -> UkiReader<'l, 'r> {
        UkiReader {
            layout: self,
            open,
            piece: 0,
            state: State::Start,
        }
    }
}

/// Opens part `i` of a UKI: its declared length and a reader.
pub type OpenPart<'r> = dyn FnMut(usize) -> io::Result<(u64, Box<dyn Read + 'r>)> + 'r;

enum State<'r> {
    Start,
    Bytes(Range<usize>),
    Zeros(u64),
    Part {
        index: usize,
        reader: Box<dyn Read + 'r>,
        left: u64,
    },
}

/// A UKI's bytes, produced piece by piece with bounded memory.
pub struct UkiReader<'l, 'r> {
    layout: &'l UkiLayout,
    open: Box<OpenPart<'r>>,
    piece: usize,
    state: State<'r>,
}

impl Read for UkiReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.state {
                State::Start => {}
                State::Bytes(range) if range.start < range.end => {
                    let n = buf.len().min(range.len());
                    buf[..n].copy_from_slice(&self.layout.bytes[range.start..range.start + n]);
                    range.start += n;
                    return Ok(n);
                }
                State::Zeros(left) if *left > 0 => {
                    let n = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                    buf[..n].fill(0);
                    *left -= n as u64;
                    return Ok(n);
                }
                State::Part { index, reader, left } => {
                    let cap = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                    let n = if cap == 0 { 0 } else { reader.read(&mut buf[..cap])? };
                    if n > 0 {
                        *left -= n as u64;
                        return Ok(n);
                    }
                    let mut probe = [0u8; 1];
                    if *left > 0 || reader.read(&mut probe)? != 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("UKI part {index} is not as long as the layout says: the build folder changed; build again"),
                        ));
                    }
                }
                State::Bytes(_) | State::Zeros(_) => {}
            }
            // The current piece is done: start the next.
            let Some(piece) = self.layout.pieces.get(self.piece) else {
                return Ok(0);
            };
            self.piece += 1;
            self.state = match piece {
                Piece::Bytes(range) => State::Bytes(range.clone()),
                Piece::Zeros(n) => State::Zeros(*n),
                Piece::Part(index) => {
                    let (left, reader) = (self.open)(*index)?;
                    State::Part {
                        index: *index,
                        reader,
                        left,
                    }
                }
            };
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::inspect::UkiInspection;
    use crate::image::manifest::Measurements;
    use crate::image::nitrotpm::NitroTpmPcrs;
    use crate::image::pe::tests::{checksum_by_words, tiny_image};
    use crate::image::pe::{authenticode_sha384, AuthenticodeStream};
    use crate::image::seal::{RemovedLayer, SealError, SealProof, SEAL_PROOF_SCHEMA};
    use sha2::{Digest as _, Sha256};

    /// A stub-like image: sections at linker offsets and an `.sdmagic` naming systemd-stub 252.
    pub(crate) fn fake_stub() -> Vec<u8> {
        tiny_image(
            &[
                (".text", &[0xC3; 700]),
                (".sdmagic", b"#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####\0"),
            ],
            b"symbols",
            b"",
        )
    }

    fn build(stub: &[u8], initrd: &[&[u8]]) -> (UkiLayout, Vec<u8>) {
        let stub = BootStub::parse(stub.to_vec()).unwrap();
        let kernel = tiny_image(&[(".text", &[0x90; 1000])], b"", b"");
        let mut parts: Vec<&[u8]> = vec![&kernel];
        parts.extend_from_slice(initrd);
        let sums: Vec<Sum16> = parts.iter().map(|p| Sum16::of(p)).collect();
        let layout = UkiLayout::new(&stub, b"ID=safebox\n", b"console=ttyS0", sums[0], &sums[1..]).unwrap();
        let mut out = Vec::new();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let mut reader = layout.reader(Box::new(move |i| {
            Ok((
                parts[i].len() as u64,
                Box::new(io::Cursor::new(parts[i].clone())) as Box<dyn Read>,
            ))
        }));
        io::copy(&mut reader, &mut out).unwrap();
        drop(reader);
        (layout, out)
    }

    /// A seal proof that `prod` is `dev` with `removed` cut from the end of `.initrd`, with
    /// both files' measurements as [`UkiInspection`] reads them (what an attacker who also
    /// rewrites the proof would write).
    fn proof(dev: &[u8], prod: &[u8], removed: &[u8]) -> SealProof {
        let measured = |file: &[u8]| {
            let read = UkiInspection::of(file).unwrap();
            Measurements {
                image_sha256: read.image_sha256,
                pcr0: None,
                pcr1: None,
                pcr2: None,
                pcr4: Some(read.pcr4),
                pcr7: Some(read.pcr7),
                pcr12: Some(read.pcr12),
                disk_sha256: None,
            }
        };
        SealProof {
            schema: SEAL_PROOF_SCHEMA.to_owned(),
            dev: measured(dev),
            removed_layer: Some(RemovedLayer {
                name: "ssh".to_owned(),
                section_index: 5,
                size: removed.len() as u64,
                sha256: hex::encode(Sha256::digest(removed)),
            }),
            prod: measured(prod),
        }
    }

    #[test]
    fn inspection_recomputes_the_pcrs_and_the_seal_proof_holds_byte_for_byte() {
        let ssh: &[u8] = b"the ssh layer's archive";
        let (_, dev) = build(&fake_stub(), &[b"first archive", b"second", ssh]);
        let (_, prod) = build(&fake_stub(), &[b"first archive", b"second"]);
        let read = UkiInspection::of(&dev).unwrap();
        let names: Vec<&str> = read.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".sdmagic", ".osrel", ".cmdline", ".linux", ".initrd"]);
        assert_eq!(read.stub_version, "252.39-1~deb12u2");
        assert_eq!(read.sections[5].size, 13 + 6 + ssh.len() as u64);
        let kernel = tiny_image(&[(".text", &[0x90; 1000])], b"", b"");
        let expected = NitroTpmPcrs::predict(
            authenticode_sha384(&mut io::Cursor::new(&dev)).unwrap(),
            authenticode_sha384(&mut io::Cursor::new(&kernel)).unwrap(),
            252,
        );
        assert_eq!(read.pcr4, hex::encode(expected.pcr4));
        assert_eq!(read.pcr12, hex::encode(expected.pcr12));
        assert_eq!(read.image_sha256, hex::encode(Sha256::digest(&dev)));

        proof(&dev, &prod, ssh).verify_uki(&dev, &prod).unwrap();

        // Each forgery comes with a proof rewritten to its measurements; the bytes still tell.
        let refused = |prod: &[u8], removed: &[u8], reason: &str| {
            let error = proof(&dev, prod, removed)
                .verify_uki(&dev, prod)
                .unwrap_err()
                .to_string();
            assert!(error.contains(reason), "{error}");
        };
        // Another archive in the production image's .initrd.
        let (_, other) = build(&fake_stub(), &[b"first archivX", b"second"]);
        refused(&other, ssh, "bytes before the cut");
        // More cut than the SSH layer.
        let (_, shorter) = build(&fake_stub(), &[b"first archive"]);
        refused(&shorter, ssh, "does not end with the removed layer");
        // A changed entry point.
        let mut entry = prod.clone();
        let h = PeHeaders::read(&mut io::Cursor::new(&prod)).unwrap();
        entry[h.optional + 16] ^= 1;
        refused(&entry, ssh, "headers differ");
        // Bytes appended.
        let mut longer = prod.clone();
        longer.extend_from_slice(&[0; 512]);
        refused(&longer, ssh, "zero padding");
        // A proof that says nothing was removed.
        let mut nothing = proof(&dev, &prod, ssh);
        nothing.removed_layer = None;
        assert!(nothing
            .verify_uki(&dev, &prod)
            .unwrap_err()
            .to_string()
            .contains("removes nothing"));
        // The file the proof does not describe.
        let error = proof(&dev, &prod, ssh).verify_uki(&dev, &other).unwrap_err();
        assert!(
            matches!(
                &error,
                SealError::Digest {
                    image: "production",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn headers_sections_alignment_and_checksum() {
        let (layout, uki) = build(&fake_stub(), &[b"first archive", b"second"]);
        assert_eq!(uki.len() as u64, layout.len());
        let h = PeHeaders::read(&mut io::Cursor::new(&uki)).unwrap();
        let names: Vec<String> = h.sections.iter().map(|s| s.name_str()).collect();
        assert_eq!(names, [".text", ".sdmagic", ".osrel", ".cmdline", ".linux", ".initrd"]);
        assert_eq!(pe::le32(&h.bytes, h.coff + 4).unwrap(), 0, "TimeDateStamp");
        assert_eq!(pe::le32(&h.bytes, h.coff + 8).unwrap(), 0, "no symbol table");
        let mut end = u64::from(h.size_of_headers);
        let mut last_va = 0;
        for s in &h.sections {
            assert_eq!(u64::from(s.pointer_to_raw_data), end, "{} contiguous", s.name_str());
            assert_eq!(s.size_of_raw_data % h.file_alignment, 0);
            assert!(s.virtual_address >= last_va);
            last_va = s.virtual_address + s.virtual_size;
            end += u64::from(s.size_of_raw_data);
        }
        assert_eq!(end, layout.len(), "no trailing bytes: the stub's symbols are dropped");
        for s in &h.sections[2..] {
            assert_eq!(s.virtual_address % PAGE, 0, "{} page-aligned", s.name_str());
            assert_eq!(pe::le32(&s.raw, 36).unwrap(), READ_ONLY_DATA);
        }
        let data = |name: &str| {
            let s = h.section(name).unwrap();
            &uki[s.pointer_to_raw_data as usize..(s.pointer_to_raw_data + s.virtual_size) as usize]
        };
        assert_eq!(data(".osrel"), b"ID=safebox\n");
        assert_eq!(data(".cmdline"), b"console=ttyS0");
        assert_eq!(data(".initrd"), b"first archivesecond");
        assert_eq!(layout.initrd_range().end - layout.initrd_range().start, 19);
        let last = h.sections.last().unwrap();
        assert_eq!(
            h.size_of_image,
            (last.virtual_address + last.virtual_size).next_multiple_of(h.section_alignment)
        );
        let checksum_at = h.optional + pe::CHECKSUM_OFFSET;
        assert_eq!(
            pe::le32(&uki, checksum_at).unwrap(),
            checksum_by_words(&uki, checksum_at)
        );
        // The streamed Authenticode equals the one read by offset, as firmware computes it.
        let mut stream = AuthenticodeStream::new(layout.authenticode_holes());
        stream.update(&uki);
        assert_eq!(
            stream.finish(),
            authenticode_sha384(&mut io::Cursor::new(&uki)).unwrap()
        );
    }

    #[test]
    fn dropping_the_last_initrd_part_changes_only_sizes_and_checksum() {
        let (_, dev) = build(&fake_stub(), &[b"base layer, 4-byte aligned..", b"ssh layer"]);
        let (_, prod) = build(&fake_stub(), &[b"base layer, 4-byte aligned.."]);
        let h = PeHeaders::read(&mut io::Cursor::new(&dev)).unwrap();
        let initrd = h.section(".initrd").unwrap();
        let start = initrd.pointer_to_raw_data as usize;
        let opt = h.optional;
        let entry = h.section_table + (h.sections.len() - 1) * SECTION_HEADER_SIZE;
        // SizeOfInitializedData, SizeOfImage, CheckSum, .initrd's VirtualSize and SizeOfRawData.
        let follow = [
            opt + 8..opt + 12,
            opt + 56..opt + 60,
            opt + 64..opt + 68,
            entry + 8..entry + 12,
            entry + 16..entry + 20,
        ];
        for i in 0..start {
            if dev[i] != prod[i] {
                assert!(follow.iter().any(|r| r.contains(&i)), "byte {i:#x} differs");
            }
        }
        assert_eq!(&prod[start..start + 28], b"base layer, 4-byte aligned..");
        assert_eq!(&dev[start..start + 37], b"base layer, 4-byte aligned..ssh layer");
        let hp = PeHeaders::read(&mut io::Cursor::new(&prod)).unwrap();
        assert_eq!(hp.section(".initrd").unwrap().virtual_size, 28);
        assert_eq!(initrd.virtual_size, 37);
        assert_eq!(prod.len(), start + 0x200);
    }

    #[test]
    fn refuses_stubs_it_cannot_assemble() {
        let parse = |bytes: Vec<u8>| BootStub::parse(bytes).unwrap_err().to_string();
        assert!(
            parse(b"not a PE file at all, just text, long enough for a DOS header................".to_vec())
                .contains("linuxx64.efi.stub")
        );
        let no_magic = tiny_image(&[(".text", &[0xC3; 10])], b"", b"");
        assert!(parse(no_magic).contains(".sdmagic"));
        let signed = tiny_image(
            &[
                (".text", &[0xC3; 10]),
                (".sdmagic", b"#### LoaderInfo: systemd-stub 252 ####"),
            ],
            b"",
            b"CERT",
        );
        assert!(parse(signed).contains("signed"));
        let (_, uki) = build(&fake_stub(), &[b"x"]);
        assert!(parse(uki).contains("already has a .osrel section"));
        let stub = BootStub::parse(fake_stub()).unwrap();
        assert_eq!(
            stub.version(),
            &StubVersion {
                major: 252,
                text: "252.39-1~deb12u2".into()
            }
        );
    }

    #[test]
    fn same_inputs_same_bytes() {
        let (_, a) = build(&fake_stub(), &[b"layer"]);
        let (_, b) = build(&fake_stub(), &[b"layer"]);
        assert_eq!(a, b);
        let (_, c) = build(&fake_stub(), &[b"layeR"]);
        assert_ne!(a, c);
    }
}
