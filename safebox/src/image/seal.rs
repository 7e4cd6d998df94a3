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
    /// One sentence naming the first thing that does not match.
    pub fn verify(&self, dev: &Eif, dev_sha256: &str, prod: &Eif, prod_sha256: &str) -> Result<(), String> {
        for (name, eif, sha, m) in [
            ("development", dev, dev_sha256, &self.dev),
            ("production", prod, prod_sha256, &self.prod),
        ] {
            if sha != m.image_sha256 {
                return Err(format!(
                    "the {name} image's SHA-256 is {sha}, the proof says {}",
                    m.image_sha256
                ));
            }
            let recorded = [&m.pcr0, &m.pcr1, &m.pcr2];
            let parsed = [&eif.pcrs.pcr0, &eif.pcrs.pcr1, &eif.pcrs.pcr2];
            if recorded
                .iter()
                .zip(parsed)
                .any(|(r, p)| r.as_deref() != Some(p.as_str()))
            {
                return Err(format!("the {name} image's PCRs differ from the proof's"));
            }
        }
        if dev.pcrs.pcr1 != prod.pcrs.pcr1 {
            return Err("PCR1 differs between the images, so their boot ramdisks differ".into());
        }
        let mut expected: Vec<_> = dev
            .sections
            .iter()
            .map(|s| (s.kind, s.size, s.sha256.clone()))
            .collect();
        if let Some(removed) = &self.removed_layer {
            let section = dev
                .sections
                .get(removed.section_index)
                .ok_or("the removed section is not in the development image")?;
            if section.sha256 != removed.sha256 || section.size != removed.size {
                return Err("the development image's section at the removed index is not the removed layer".into());
            }
            expected.remove(removed.section_index);
        }
        let actual: Vec<_> = prod
            .sections
            .iter()
            .map(|s| (s.kind, s.size, s.sha256.clone()))
            .collect();
        if actual != expected {
            return Err(
                "the production image's sections are not the development image's minus the removed layer".into(),
            );
        }
        Ok(())
    }

    /// Checks the proof against the development and production UKIs' bytes.
    ///
    /// # Errors
    /// One sentence naming the first thing that does not match.
    pub fn verify_uki(&self, dev: &[u8], prod: &[u8]) -> Result<(), String> {
        for (name, file, m) in [("development", dev, &self.dev), ("production", prod, &self.prod)] {
            let read = UkiInspection::of(file).map_err(|e| format!("the {name} image {e}"))?;
            if read.image_sha256 != m.image_sha256 {
                return Err(format!(
                    "the {name} image's SHA-256 is {}, the proof says {}",
                    read.image_sha256, m.image_sha256
                ));
            }
            let recorded = [&m.pcr4, &m.pcr7, &m.pcr12];
            let computed = [&read.pcr4, &read.pcr7, &read.pcr12];
            if recorded
                .iter()
                .zip(computed)
                .any(|(r, c)| r.as_deref() != Some(c.as_str()))
            {
                return Err(format!("the {name} image's NitroTPM PCRs differ from the proof's"));
            }
        }
        let Some(removed) = &self.removed_layer else {
            return if dev == prod {
                Ok(())
            } else {
                Err("the proof removes nothing, but the images differ".into())
            };
        };
        let read = |file: &[u8], name: &str| {
            PeHeaders::read(&mut Cursor::new(file)).map_err(|e| format!("the {name} image: {e}"))
        };
        let (d, p) = (read(dev, "development")?, read(prod, "production")?);
        let last = d.sections.len().checked_sub(1);
        if last != Some(removed.section_index)
            || d.sections.get(removed.section_index).map(Section::name_str).as_deref() != Some(".initrd")
        {
            return Err("the removed layer is not in the development image's .initrd, its last section".into());
        }
        if d.bytes.len() != p.bytes.len() || d.sections.len() != p.sections.len() {
            return Err("the images' headers differ in size or section count".into());
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
            return Err("the production image's headers differ from the development image's in more than the sizes and checksum the seal step changes".into());
        }
        let dev_data = section_data(dev, dev_initrd).map_err(|e| format!("the development image {e}"))?;
        let prod_data = section_data(prod, prod_initrd).map_err(|e| format!("the production image {e}"))?;
        let start = dev_initrd.pointer_to_raw_data as usize;
        let kept = start + prod_data.len();
        let body = d.bytes.len()..kept;
        if dev.get(body.clone()).is_none() || dev.get(body.clone()) != prod.get(body) {
            return Err("the production image's bytes before the cut are not the development image's".into());
        }
        let tail = &dev_data[prod_data.len()..];
        if tail.len() as u64 != removed.size || hex::encode(Sha256::digest(tail)) != removed.sha256 {
            return Err(format!(
                "the development image's .initrd does not end with the removed layer ({} bytes, SHA-256 {})",
                removed.size, removed.sha256
            ));
        }
        let end = start + prod_initrd.size_of_raw_data as usize;
        if prod.len() != end || prod[kept..].iter().any(|&b| b != 0) {
            return Err("the production image does not end with its .initrd and zero padding".into());
        }
        Ok(())
    }
}
