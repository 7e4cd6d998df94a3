//! The two-image pipeline: a development image assembled from hash-verified inputs, and the
//! production image sealed from it by removing exactly its SSH layer.
//!
//! - [`spec`]: what to build ([`spec::ImageSpec`]), checked before any input is read.
//! - [`manifest`]: the canonical build manifest and [`manifest::Measurements`].
//! - [`build`]: the deterministic, streaming builder ([`build::ImageBuild`]).
//! - [`cpio`], [`layer`]: deterministic initramfs layers.
//! - [`eif`]: the Nitro Enclave Image File format, written and parsed.
//! - [`seal`]: the seal proof linking the two images.
//! - [`inspect`]: a built UKI's sections and PCRs, recomputed from the file.

pub mod build;
pub mod cpio;
pub mod disk;
pub mod eif;
pub mod inspect;
pub mod layer;
pub mod manifest;
pub mod nitrotpm;
pub mod pe;
pub mod seal;
pub mod spec;
pub mod uki;

use std::fmt;
use std::io;

use sha2::Digest as _;

/// The SHA-256 (lowercase hex) of everything `reader` yields.
///
/// # Errors
/// What reading returns.
pub fn sha256_hex(mut reader: impl io::Read) -> io::Result<String> {
    let mut hasher = sha2::Sha256::new();
    io::copy(&mut reader, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Which of the two images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The development image: the production image plus the SSH layer.
    Dev,
    /// The production image.
    Prod,
}

impl Variant {
    /// `dev` or `prod`, as configuration and file names say it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Prod => "prod",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
