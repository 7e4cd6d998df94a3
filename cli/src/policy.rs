//! `safebox policy`: checks on policy documents as Terraform shows them.

use std::path::PathBuf;

use clap::Subcommand;
use safebox::canonical::{sha256_tagged, to_canonical_json};

/// Policy document commands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the digest of a policy document (the `document` attribute of a safebox_policy),
    /// after checking that it is in canonical form, so it can be compared with the plan's
    /// `digest`.
    Digest {
        /// The document file.
        document: PathBuf,
    },
}

impl PolicyCommand {
    pub fn run(self) -> Result<(), String> {
        match self {
            Self::Digest { document } => {
                let bytes = std::fs::read(&document).map_err(|e| format!("reading {}: {e}", document.display()))?;
                let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", document.display()))?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("{} is not JSON: {e}", document.display()))?;
                let canonical = to_canonical_json(&value).map_err(|e| format!("{}: {e}", document.display()))?;
                if canonical != text {
                    return Err(format!(
                        "{} is not in canonical form (RFC 8785), so its digest would not match the plan's; use the document exactly as Terraform shows it",
                        document.display()
                    ));
                }
                println!("{}", sha256_tagged(canonical.as_bytes()));
                Ok(())
            }
        }
    }
}
