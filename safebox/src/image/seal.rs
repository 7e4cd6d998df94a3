//! The seal step's evidence: the production image is the development image with exactly its
//! SSH layer removed.
//!
//! The seal proof is canonical JSON of both images' measurements and the removed layer
//! (its position among the development image's sections, size and SHA-256). [`SealProof::verify`]
//! checks it against the two EIF files: same sections in the same order but the removed one,
//! and PCR1 (kernel, cmdline, first ramdisk) equal in both. [`SealProof::verify_uki`] checks it
//! against two Unified Kernel Images byte for byte: the production UKI is the development UKI
//! with the removed layer cut from the end of `.initrd` (the last section), and only the fields
//! that cut must change (that section's sizes, `SizeOfImage`, `SizeOfInitializedData`,
//! `CheckSum`) differ.

use serde::{Deserialize, Serialize};

use std::io::Cursor;

use sha2::{Digest as _, Sha256};

use super::eif::Eif;
use super::inspect::{section_data, UkiInspection};
use super::manifest::Measurements;
use super::pe::{PeHeaders, Section, CHECKSUM_OFFSET, SECTION_HEADER_SIZE};
use crate::canonical::to_canonical_json;

/// The `schema` of seal proofs this version writes.
pub const SEAL_PROOF_SCHEMA: &str = "safebox-seal-proof/v1";

/// Why a seal proof does not hold for two images.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A file is not the image the proof describes.
    #[error("the {image} image's SHA-256 is {actual}, the proof says {recorded}")]
    Digest {
        /// `development` or `production`.
        image: &'static str,
        /// The file's.
        actual: String,
        /// The proof's.
        recorded: String,
    },
    /// A file's recomputed PCRs are not the proof's.
    #[error("the {image} image's {pcrs} differ from the proof's")]
    Pcrs {
        /// `development` or `production`.
        image: &'static str,
        /// Which PCRs (`PCRs`, `NitroTPM PCRs`).
        pcrs: &'static str,
    },
    /// A file cannot be read as the image it should be.
    #[error("the {image} image {reason}")]
    Unreadable {
        /// `development` or `production`.
        image: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The production image is not the development image minus the removed layer: what
    /// differs.
    #[error("{0}")]
    NotDerived(&'static str),
    /// The development image's `.initrd` does not end with the removed layer.
    #[error("the development image's .initrd does not end with the removed layer ({size} bytes, SHA-256 {sha256})")]
    NotRemoved {
        /// The proof's size of the layer.
        size: u64,
        /// The proof's SHA-256 of the layer.
        sha256: String,
    },
}

/// The layer the seal step removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedLayer {
    /// Always `ssh`.
    pub name: String,
    /// Its index among the development image's sections.
    pub section_index: usize,
    /// Its size.
    pub size: u64,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// Evidence that the production image derives from the development image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealProof {
    /// Always [`SEAL_PROOF_SCHEMA`].
    pub schema: String,
    /// The development image.
    pub dev: Measurements,
    /// What was removed; `None` when the image has no `dev_access` and both are the same.
    pub removed_layer: Option<RemovedLayer>,
    /// The production image.
    pub prod: Measurements,
}

impl SealProof {
    /// The proof as canonical JSON.
    #[must_use]
    pub fn document(&self) -> String {
        to_canonical_json(&serde_json::to_value(self).unwrap_or_default()).unwrap_or_default()
    }

    /// Checks the proof against parsed EIFs and their file digests.
    ///
    /// # Errors
    /// [`SealError`] naming the first thing that does not match.
    pub fn verify(&self, dev: &Eif, dev_sha256: &str, prod: &Eif, prod_sha256: &str) -> Result<(), SealError> {
        for (name, eif, sha, m) in [
            ("development", dev, dev_sha256, &self.dev),
            ("production", prod, prod_sha256, &self.prod),
        ] {
            let computed = [&eif.pcrs.pcr0, &eif.pcrs.pcr1, &eif.pcrs.pcr2];
            check_image(name, (sha, m), ("PCRs", [&m.pcr0, &m.pcr1, &m.pcr2], computed))?;
        }
        if dev.pcrs.pcr1 != prod.pcrs.pcr1 {
            return Err(SealError::NotDerived(
                "PCR1 differs between the images, so their boot ramdisks differ",
            ));
        }
        let mut expected: Vec<_> = dev
            .sections
            .iter()
            .map(|s| (s.kind, s.size, s.sha256.clone()))
            .collect();
        if let Some(removed) = &self.removed_layer {
            let section = dev.sections.get(removed.section_index).ok_or(SealError::NotDerived(
                "the removed section is not in the development image",
            ))?;
            if section.sha256 != removed.sha256 || section.size != removed.size {
                return Err(SealError::NotDerived(
                    "the development image's section at the removed index is not the removed layer",
                ));
            }
            expected.remove(removed.section_index);
        }
        let actual: Vec<_> = prod
            .sections
            .iter()
            .map(|s| (s.kind, s.size, s.sha256.clone()))
            .collect();
        if actual != expected {
            return Err(SealError::NotDerived(
                "the production image's sections are not the development image's minus the removed layer",
            ));
        }
        Ok(())
    }

    /// Checks the proof against the development and production UKIs' bytes.
    ///
    /// # Errors
    /// [`SealError`] naming the first thing that does not match.
    pub fn verify_uki(&self, dev: &[u8], prod: &[u8]) -> Result<(), SealError> {
        for (name, file, m) in [("development", dev, &self.dev), ("production", prod, &self.prod)] {
            let read = UkiInspection::of(file).map_err(|e| SealError::Unreadable {
                image: name,
                reason: e.to_string(),
            })?;
            let computed = [&read.pcr4, &read.pcr7, &read.pcr12];
            check_image(
                name,
                (&read.image_sha256, m),
                ("NitroTPM PCRs", [&m.pcr4, &m.pcr7, &m.pcr12], computed),
            )?;
        }
        let Some(removed) = &self.removed_layer else {
            return if dev == prod {
                Ok(())
            } else {
                Err(SealError::NotDerived(
                    "the proof removes nothing, but the images differ",
                ))
            };
        };
        let read = |file: &[u8], image: &'static str| {
            PeHeaders::read(&mut Cursor::new(file)).map_err(|e| SealError::Unreadable {
                image,
                reason: e.to_string(),
            })
        };
        let (d, p) = (read(dev, "development")?, read(prod, "production")?);
        let last = d.sections.len().checked_sub(1);
        if last != Some(removed.section_index)
            || d.sections.get(removed.section_index).map(Section::name_str).as_deref() != Some(".initrd")
        {
            return Err(SealError::NotDerived(
                "the removed layer is not in the development image's .initrd, its last section",
            ));
        }
        if d.bytes.len() != p.bytes.len() || d.sections.len() != p.sections.len() {
            return Err(SealError::NotDerived(
                "the images' headers differ in size or section count",
            ));
        }
        let index = removed.section_index;
        let (dev_initrd, prod_initrd) = (&d.sections[index], &p.sections[index]);
        // The development headers with the fields the cut changes taken from the production
        // image must be the production headers, byte for byte.
        let mut expected = d.bytes.clone();
        let entry = d.section_table + index * SECTION_HEADER_SIZE;
        for at in [
            d.optional + 8,
            d.optional + 56,
            d.optional + CHECKSUM_OFFSET,
            entry + 8,
            entry + 16,
        ] {
            expected[at..at + 4].copy_from_slice(&p.bytes[at..at + 4]);
        }
        if expected != p.bytes {
            return Err(SealError::NotDerived(
                "the production image's headers differ from the development image's in more than the sizes and checksum the seal step changes",
            ));
        }
        let unreadable = |image: &'static str| {
            move |e: super::inspect::InspectError| SealError::Unreadable {
                image,
                reason: e.to_string(),
            }
        };
        let dev_data = section_data(dev, dev_initrd).map_err(unreadable("development"))?;
        let prod_data = section_data(prod, prod_initrd).map_err(unreadable("production"))?;
        let start = dev_initrd.pointer_to_raw_data as usize;
        let kept = start + prod_data.len();
        let body = d.bytes.len()..kept;
        if dev.get(body.clone()).is_none() || dev.get(body.clone()) != prod.get(body) {
            return Err(SealError::NotDerived(
                "the production image's bytes before the cut are not the development image's",
            ));
        }
        let tail = &dev_data[prod_data.len()..];
        if tail.len() as u64 != removed.size || hex::encode(Sha256::digest(tail)) != removed.sha256 {
            return Err(SealError::NotRemoved {
                size: removed.size,
                sha256: removed.sha256.clone(),
            });
        }
        let end = start + prod_initrd.size_of_raw_data as usize;
        if prod.len() != end || prod[kept..].iter().any(|&b| b != 0) {
            return Err(SealError::NotDerived(
                "the production image does not end with its .initrd and zero padding",
            ));
        }
        Ok(())
    }
}

/// Checks one image against the proof's measurements `m` of it: its SHA-256, and the PCRs
/// recomputed from it (`computed`) against the proof's (`recorded`).
fn check_image(
    image: &'static str,
    (sha256, m): (&str, &Measurements),
    (pcrs, recorded, computed): (&'static str, [&Option<String>; 3], [&String; 3]),
) -> Result<(), SealError> {
    if sha256 != m.image_sha256 {
        return Err(SealError::Digest {
            image,
            actual: sha256.to_owned(),
            recorded: m.image_sha256.clone(),
        });
    }
    if recorded
        .iter()
        .zip(computed)
        .any(|(r, c)| r.as_deref() != Some(c.as_str()))
    {
        return Err(SealError::Pcrs { image, pcrs });
    }
    Ok(())
}
