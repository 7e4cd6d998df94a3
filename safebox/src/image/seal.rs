//! The seal step's evidence: the production image is the development image with exactly its
//! SSH layer removed.
//!
//! The seal proof is canonical JSON of both images' measurements and the removed layer
//! (its position among the development image's sections, size and SHA-256). [`SealProof::verify`]
//! checks it against the two EIF files: same sections in the same order but the removed one,
//! and PCR1 (kernel, cmdline, first ramdisk) equal in both.

use serde::{Deserialize, Serialize};

use super::eif::Eif;
use super::manifest::Measurements;
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
}
