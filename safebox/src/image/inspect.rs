//! What an auditor reads back from a built Unified Kernel Image: its sections, its digests and
//! the NitroTPM PCRs booting it gives, recomputed from the file alone (the stub version from its
//! `.sdmagic`, the kernel from its `.linux`), so they can be compared with the plan, the
//! manifest and the AMI's tags without trusting any of them.

use std::io::Cursor;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::nitrotpm::NitroTpmPcrs;
use super::pe::{authenticode_sha384, PeError, PeHeaders, Section};
use super::uki::stub_version;

/// Why a file cannot be inspected as a UKI.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Not a PE image, or one whose headers or sections are out of place.
    #[error("is not a readable x86-64 EFI image: {0}")]
    Pe(#[from] PeError),
    /// A PE image without what a UKI has.
    #[error("is not a Unified Kernel Image: {0}")]
    NotUki(String),
}

/// One section of a UKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionSummary {
    /// Its name (`.linux`, `.initrd`, ...).
    pub name: String,
    /// The data length (`VirtualSize`).
    pub size: u64,
    /// SHA-256 of those bytes.
    pub sha256: String,
}

/// A UKI as read from its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UkiInspection {
    /// `uki`.
    pub format: &'static str,
    /// SHA-256 of the file (the image's `image_sha256`).
    pub image_sha256: String,
    /// The systemd-stub version its `.sdmagic` states.
    pub stub_version: String,
    /// Its sections, in table order.
    pub sections: Vec<SectionSummary>,
    /// NitroTPM PCR4 of a standard boot of it (hex SHA-384).
    pub pcr4: String,
    /// PCR7, Secure Boot off.
    pub pcr7: String,
    /// PCR12: no parameters passed to the stub.
    pub pcr12: String,
}

/// The bytes of `section`'s data in `file` (its `VirtualSize` bytes from its file offset).
///
/// # Errors
/// [`InspectError::NotUki`] when they lie outside the file.
pub fn section_data<'f>(file: &'f [u8], section: &Section) -> Result<&'f [u8], InspectError> {
    section.data(file).ok_or_else(|| {
        InspectError::NotUki(format!(
            "section {} lies beyond the end of the file",
            section.name_str()
        ))
    })
}

impl UkiInspection {
    /// Reads `file`, a UKI.
    ///
    /// # Errors
    /// [`InspectError`] saying what is not as a UKI has it.
    pub fn of(file: &[u8]) -> Result<Self, InspectError> {
        let headers = PeHeaders::read(&mut Cursor::new(file))?;
        let version = stub_version(file, &headers)
            .ok_or_else(|| InspectError::NotUki("it has no .sdmagic section naming a systemd-stub version".into()))?;
        let linux = headers
            .section(".linux")
            .ok_or_else(|| InspectError::NotUki("it has no .linux section".into()))?;
        if headers.section(".initrd").is_none() {
            return Err(InspectError::NotUki("it has no .initrd section".into()));
        }
        let kernel = authenticode_sha384(&mut Cursor::new(section_data(file, linux)?))?;
        let uki = authenticode_sha384(&mut Cursor::new(file))?;
        let pcrs = NitroTpmPcrs::predict(uki, kernel, version.major);
        let sections = headers
            .sections
            .iter()
            .map(|section| {
                let data = section_data(file, section)?;
                Ok(SectionSummary {
                    name: section.name_str(),
                    size: data.len() as u64,
                    sha256: hex::encode(Sha256::digest(data)),
                })
            })
            .collect::<Result<_, InspectError>>()?;
        Ok(Self {
            format: "uki",
            image_sha256: hex::encode(Sha256::digest(file)),
            stub_version: version.text,
            sections,
            pcr4: hex::encode(pcrs.pcr4),
            pcr7: hex::encode(pcrs.pcr7),
            pcr12: hex::encode(pcrs.pcr12),
        })
    }
}
