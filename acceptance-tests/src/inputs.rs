//! Inputs that scripts make before the tests run (from Debian packages, and the static agent):
//! where they are, and what a test does when they are missing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The folder named by the environment variable `var`, else `default` in the checkout.
fn folder(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| crate::workspace_root().join(default), PathBuf::from)
}

/// The UKI boot test's inputs (`scripts/uki-inputs`): `SAFEBOX_UKI_INPUTS`, else `.uki-inputs`.
#[must_use]
pub fn uki_inputs() -> PathBuf {
    folder("SAFEBOX_UKI_INPUTS", ".uki-inputs")
}

/// The boxes' inputs (`scripts/guest-layer`): `SAFEBOX_BOX_INPUTS`, else `.box-inputs`.
#[must_use]
pub fn box_inputs() -> PathBuf {
    folder("SAFEBOX_BOX_INPUTS", ".box-inputs")
}

/// File name to SHA-256 (hex), from the `SHA256SUMS` in `dir` (empty when there is none).
#[must_use]
pub fn pinned(dir: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(dir.join("SHA256SUMS"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sha, name)| (name.to_owned(), sha.to_owned()))
        .collect()
}

/// Says that a test cannot run for want of `what` (and what to run): under `CI=true` a
/// failure, elsewhere one line saying it was skipped.
///
/// # Panics
/// Under `CI=true`.
pub fn missing(what: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{what}");
    println!("skipped: {what}");
}
