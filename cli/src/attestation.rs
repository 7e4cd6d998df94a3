//! `safebox attestation verify`: check an AWS Nitro attestation document (a Nitro Enclave's or
//! an EC2 instance's NitroTPM document) offline.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use clap::Subcommand;
use safebox::attest::chain::TrustRoot;
use safebox::attest::document::DocumentKind;
use safebox::attest::verify::{verify, Policy};
use serde_json::json;

/// Attestation commands.
#[derive(Debug, Subcommand)]
pub enum AttestationCommand {
    /// Verify a document: signature, certificate chain to the root, PCRs, nonce. Prints the
    /// document's contents as JSON and exits 0 when valid; exits 1 with one line when not.
    Verify {
        /// The document: raw CBOR, or base64 text.
        #[arg(long)]
        document: PathBuf,
        /// PEM root certificate (default: the pinned AWS Nitro Enclaves root G1).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Verification time, RFC 3339 (default: now).
        #[arg(long)]
        at: Option<String>,
        /// Expected PCR value, as INDEX=HEX; repeat for several.
        #[arg(long = "pcr", value_name = "N=HEX")]
        pcrs: Vec<String>,
        /// Expected nonce, hex.
        #[arg(long)]
        nonce: Option<String>,
        /// Accept debug-mode documents (PCR0, PCR1 and PCR2 all zero).
        #[arg(long)]
        allow_debug: bool,
        /// Require this kind of document: `enclave` (`pcrs`) or `nitrotpm` (`nitrotpm_pcrs`,
        /// what a box of a "uki" image presents). Default: either.
        #[arg(long)]
        kind: Option<String>,
    },
}

impl AttestationCommand {
    pub fn run(self) -> Result<(), String> {
        let Self::Verify {
            document,
            root,
            at,
            pcrs,
            nonce,
            allow_debug,
            kind,
        } = self;
        let kind = kind
            .map(|k| DocumentKind::from_name(&k).map_err(|e| format!("--kind: {e}")))
            .transpose()?;
        let bytes = std::fs::read(&document).map_err(|e| format!("reading {}: {e}", document.display()))?;
        let bytes = decode_document(bytes);
        let root = match root {
            Some(path) => {
                let pem = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                TrustRoot::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => TrustRoot::aws(),
        };
        let at_ms = match at {
            Some(text) => {
                let t = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).map_err(
                    |e| format!("--at {text:?} is not an RFC 3339 time ({e}); write it like 2024-09-07T14:37:39Z"),
                )?;
                u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
                    .map_err(|_| format!("--at {text:?} is before 1970"))?
            }
            None => u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        };
        let mut expected_pcrs = BTreeMap::new();
        for pcr in &pcrs {
            let (index, value) = pcr
                .split_once('=')
                .ok_or_else(|| format!("--pcr {pcr:?} is not N=HEX"))?;
            let index: u32 = index
                .trim()
                .parse()
                .map_err(|_| format!("--pcr {pcr:?}: {index:?} is not a PCR index"))?;
            let value = hex::decode(value.trim()).map_err(|_| format!("--pcr {pcr:?}: the value is not hex"))?;
            expected_pcrs.insert(index, value);
        }
        let nonce = nonce
            .map(|n| hex::decode(n.trim()).map_err(|_| format!("--nonce {n:?} is not hex")))
            .transpose()?;
        let policy = Policy {
            root: &root,
            at_ms,
            expected_pcrs,
            nonce,
            max_age_ms: None,
            allow_debug,
            kind,
        };
        let verified = verify(&bytes, &policy, None).map_err(|e| e.to_string())?;
        let doc = verified.document;
        let timestamp = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(doc.timestamp_ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        let output = json!({
            "kind": doc.kind.as_str(),
            "module_id": doc.module_id,
            // As the document has it (milliseconds since the Unix epoch), and as text.
            "timestamp": doc.timestamp_ms,
            "timestamp_ms": doc.timestamp_ms,
            "timestamp_rfc3339": timestamp,
            "digest": doc.digest,
            "pcrs": doc.pcrs.iter().map(|(i, v)| (i.to_string(), json!(hex::encode(v)))).collect::<serde_json::Map<_, _>>(),
            "public_key": doc.public_key.as_deref().map(hex::encode),
            "user_data": doc.user_data.as_deref().map(hex::encode),
            "nonce": doc.nonce.as_deref().map(hex::encode),
            "document_sha256": verified.document_sha256,
            "root_sha256": root.sha256(),
        });
        println!("{}", serde_json::to_string_pretty(&output).map_err(|e| e.to_string())?);
        Ok(())
    }
}

/// A document file holds raw CBOR, or the same as base64 text.
fn decode_document(bytes: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&bytes);
    let compact: String = text.split_whitespace().collect();
    if !compact.is_empty()
        && compact
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
    {
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE,
        ];
        for engine in engines {
            if let Ok(decoded) = engine
                .decode(compact.trim_end_matches('='))
                .or_else(|_| engine.decode(&compact))
            {
                return decoded;
            }
        }
    }
    bytes
}
