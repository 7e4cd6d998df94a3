//! `safebox_attestation`: verifies an attestation document and exposes what it attests.

use std::collections::BTreeMap;

use base64::Engine as _;
use safebox::attest::chain::TrustRoot;
use safebox::attest::verify::{verify, Policy, VerifiedDocument};

use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, Schema};
use crate::framework::types::Type;
use crate::framework::validators::{duration, parse_duration};
use crate::framework::value::Value;
use crate::resource::{Ctx, DataSource};

/// The `safebox_attestation` data source.
pub struct AttestationDataSource {
    schema: Schema,
}

impl Default for AttestationDataSource {
    fn default() -> Self {
        Self::new()
    }
}

/// What a verified document says, as attribute values (bytes as lower-case hex).
#[must_use]
pub fn document_values(verified: &VerifiedDocument) -> Vec<(&'static str, Value)> {
    let doc = &verified.document;
    let hex_or_null = |v: &Option<Vec<u8>>| v.as_deref().map_or(Value::Null, |b| Value::string(hex::encode(b)));
    vec![
        ("module_id", Value::string(&doc.module_id)),
        ("timestamp", Value::string(crate::clock::rfc3339_ms(doc.timestamp_ms))),
        (
            "pcrs",
            Value::Map(
                doc.pcrs
                    .iter()
                    .map(|(i, v)| (i.to_string(), Value::string(hex::encode(v))))
                    .collect(),
            ),
        ),
        ("public_key", hex_or_null(&doc.public_key)),
        ("user_data", hex_or_null(&doc.user_data)),
        ("nonce", hex_or_null(&doc.nonce)),
        ("document_sha256", Value::string(&verified.document_sha256)),
    ]
}

/// The types of [`document_values`].
#[must_use]
pub fn document_types() -> Vec<(&'static str, Type)> {
    vec![
        ("module_id", Type::String),
        ("timestamp", Type::String),
        ("pcrs", Type::map(Type::String)),
        ("public_key", Type::String),
        ("user_data", Type::String),
        ("nonce", Type::String),
        ("document_sha256", Type::String),
    ]
}

/// Decodes base64 (standard or URL-safe, padded or not).
///
/// # Errors
/// A message saying the text is not base64.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.split_whitespace().collect();
    let trimmed = compact.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
        .map_err(|e| format!("is not base64 ({e})"))
}

/// PCR index to bytes, from a map of index strings to hex.
///
/// # Errors
/// A message naming the bad key or value.
pub fn expected_pcrs(value: &Value) -> Result<BTreeMap<u32, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    for (key, pcr) in value.as_map().into_iter().flatten() {
        let index: u32 = key
            .parse()
            .ok()
            .filter(|i| *i < 32)
            .ok_or_else(|| format!("key {key:?} is not a PCR index from 0 to 31"))?;
        let bytes = pcr
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| format!("[{key:?}] is not hex"))?;
        out.insert(index, bytes);
    }
    Ok(out)
}

impl AttestationDataSource {
    /// The data source with its schema.
    #[must_use]
    pub fn new() -> Self {
        let mut attributes = vec![
            Attribute::required("document_base64", Type::String)
                .describe("The attestation document (COSE_Sign1), base64."),
            Attribute::optional("expected_pcrs", Type::map(Type::String))
                .describe("PCR index to expected value (hex)."),
            Attribute::optional_computed("nonce", Type::String).describe(
                "The nonce the document must carry (hex). When not set, the document's nonce (null when it has none).",
            ),
            Attribute::optional("max_age", Type::String)
                .describe("How old the document may be, e.g. `10m`. Default: the provider's `attestation.max_age`.")
                .validate(duration()),
            Attribute::optional("verify_at", Type::String).describe("Verification time (RFC 3339). Default: now."),
            Attribute::optional("allow_debug", Type::Bool)
                .describe("Accept debug-mode documents (PCR0, PCR1 and PCR2 all zero)."),
            Attribute::computed("simulated", Type::Bool)
                .describe("Whether the document chains to the local backend's simulated root."),
        ];
        // `nonce` is both: the nonce required when set, the document's when not.
        attributes.extend(
            document_types()
                .into_iter()
                .filter(|(name, _)| *name != "nonce")
                .map(|(name, ty)| Attribute::computed(name, ty)),
        );
        Self {
            schema: Schema {
                version: 0,
                block: Block::new(attributes).describe("Verifies an AWS Nitro attestation document against the provider's trust root and exposes what it attests. Fails when the document does not verify."),
            },
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

#[async_trait::async_trait]
impl DataSource for AttestationDataSource {
    fn type_name(&self) -> &'static str {
        "safebox_attestation"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn read(&self, ctx: &Ctx, config: &Value, diags: &mut Diagnostics) -> Value {
        let at = |name: &str| AttributePath::attr_root(name);
        let document = match decode_base64(config.get("document_base64").as_str().unwrap_or_default()) {
            Ok(bytes) => bytes,
            Err(reason) => {
                diags.error_at(
                    at("document_base64"),
                    "Invalid document",
                    format!("document_base64 {reason}."),
                );
                return Value::Null;
            }
        };
        let expected = match expected_pcrs(config.get("expected_pcrs")) {
            Ok(pcrs) => pcrs,
            Err(reason) => {
                diags.error_at(
                    at("expected_pcrs"),
                    "Invalid expected PCRs",
                    format!("expected_pcrs {reason}."),
                );
                return Value::Null;
            }
        };
        let nonce = match config.get("nonce").as_str().map(hex::decode).transpose() {
            Ok(nonce) => nonce,
            Err(_) => {
                diags.error_at(at("nonce"), "Invalid nonce", "nonce must be hex.");
                return Value::Null;
            }
        };
        let at_ms = match config.get("verify_at").as_str() {
            None => now_ms(),
            Some(text) => match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
                Ok(t) => u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                Err(e) => {
                    diags.error_at(
                        at("verify_at"),
                        "Invalid verification time",
                        format!("verify_at {text:?} is not RFC 3339 ({e}); write it like 2024-09-07T14:37:39Z."),
                    );
                    return Value::Null;
                }
            },
        };
        let settings = &ctx.configured.attestation;
        let max_age = config
            .get("max_age")
            .as_str()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(settings.max_age);
        // The configured root (the pinned AWS root by default); the local backend's simulated
        // root only when simulation is allowed.
        let mut roots = vec![(settings.trust_root.clone().unwrap_or_else(TrustRoot::aws), false)];
        if settings.allow_simulated {
            if let Some(Ok(root)) = ctx.configured.cloud.simulated().map(|s| s.trust_root()) {
                roots.push((root, true));
            }
        }
        // The document chains to at most one of the roots: the error to report is the one
        // from that root (a wrong nonce, a PCR), not "another root" from the others.
        let mut first_error: Option<safebox::attest::AttestationError> = None;
        for (root, simulated) in &roots {
            let policy = Policy {
                root,
                at_ms,
                expected_pcrs: expected.clone(),
                nonce: nonce.clone(),
                max_age_ms: Some(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX)),
                allow_debug: config.get("allow_debug").as_bool().unwrap_or(false),
                kind: None,
            };
            match verify(&document, &policy, None) {
                Ok(verified) => {
                    let mut state = config.clone();
                    for (name, value) in document_values(&verified) {
                        // A nonce that was required stays as written (the document carries it).
                        if name != "nonce" || nonce.is_none() {
                            state.set(name, value);
                        }
                    }
                    state.set("simulated", Value::Bool(*simulated));
                    return state;
                }
                Err(e) => {
                    let untrusted = |e: &safebox::attest::AttestationError| {
                        matches!(e, safebox::attest::AttestationError::UntrustedRoot { .. })
                    };
                    if first_error
                        .as_ref()
                        .is_none_or(|first| untrusted(first) && !untrusted(&e))
                    {
                        first_error = Some(e);
                    }
                }
            }
        }
        let reason = first_error.map(|e| e.to_string()).unwrap_or_default();
        diags.error_at(
            at("document_base64"),
            "Attestation document rejected",
            format!("{reason}."),
        );
        Value::Null
    }
}
