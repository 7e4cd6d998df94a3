//! Parsing an attestation document: COSE_Sign1 around the Nitro payload.
//!
//! Accepted: `[protected: bstr, unprotected: map, payload: bstr, signature: bstr]`, tagged
//! (18) or untagged, nothing after it. The protected header must name ES384. The payload is a
//! map with exactly the nine Nitro fields, definite or indefinite length; `public_key`,
//! `user_data` and `nonce` may be null. The raw payload bytes are kept for the signature.

use std::collections::BTreeMap;

use ciborium::value::{Integer, Value};

use super::AttestationError;

/// Largest document accepted (real ones are 4 to 8 KiB).
pub const MAX_DOCUMENT: usize = 32 * 1024;
/// Largest certificate (AWS's are under 1 KiB).
pub const MAX_CERTIFICATE: usize = 4 * 1024;
/// Most certificates in the bundle.
pub const MAX_BUNDLE: usize = 8;
/// Largest `public_key`, `user_data` or `nonce` (the NSM's own limit).
pub const MAX_OPTIONAL_FIELD: usize = 1024;
/// Longest module id.
pub const MAX_MODULE_ID: usize = 256;
/// Most PCRs.
pub const MAX_PCRS: usize = 32;
/// COSE algorithm ES384 (RFC 9053 section 2.1).
const ES384: i128 = -35;
/// COSE header parameter `alg`.
const HEADER_ALG: i128 = 1;
/// The CBOR tag of COSE_Sign1.
const TAG_COSE_SIGN1: u64 = 18;

/// A parsed, not yet verified, attestation document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationDocument {
    /// The protected header bytes, as received.
    pub protected: Vec<u8>,
    /// The payload bytes, as received.
    pub payload: Vec<u8>,
    /// The signature, `r || s` (96 bytes for ES384).
    pub signature: Vec<u8>,
    /// The enclave's module id.
    pub module_id: String,
    /// The digest algorithm of the PCRs (`SHA384`).
    pub digest: String,
    /// Milliseconds since 1970.
    pub timestamp_ms: u64,
    /// PCR index to value.
    pub pcrs: BTreeMap<u32, Vec<u8>>,
    /// The leaf certificate (DER).
    pub certificate: Vec<u8>,
    /// Root first, then intermediates toward the leaf (DER).
    pub cabundle: Vec<Vec<u8>>,
    /// Optional public key bound into the document.
    pub public_key: Option<Vec<u8>>,
    /// Optional user data.
    pub user_data: Option<Vec<u8>>,
    /// Optional nonce.
    pub nonce: Option<Vec<u8>>,
}

fn malformed(what: impl Into<String>) -> AttestationError {
    AttestationError::Malformed(what.into())
}

fn decode(bytes: &[u8], what: &str) -> Result<Value, AttestationError> {
    let mut rest = bytes;
    let value: Value =
        ciborium::de::from_reader(&mut rest).map_err(|e| malformed(format!("{what} is not valid CBOR ({e})")))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} unexpected bytes follow the {what}", rest.len())));
    }
    Ok(value)
}

fn limit(field: &'static str, size: usize, limit: usize) -> Result<(), AttestationError> {
    if size > limit {
        Err(AttestationError::TooLarge { field, size, limit })
    } else {
        Ok(())
    }
}

fn take_bytes(value: Value, field: &'static str, max: usize) -> Result<Vec<u8>, AttestationError> {
    match value {
        Value::Bytes(b) => {
            limit(field, b.len(), max)?;
            Ok(b)
        }
        _ => Err(malformed(format!("{field} is not a byte string"))),
    }
}

fn take_optional(value: Value, field: &'static str) -> Result<Option<Vec<u8>>, AttestationError> {
    match value {
        Value::Null => Ok(None),
        other => take_bytes(other, field, MAX_OPTIONAL_FIELD).map(Some),
    }
}

impl AttestationDocument {
    /// Parses a document.
    ///
    /// # Errors
    /// An [`AttestationError`] naming what is malformed or too large.
    pub fn parse(bytes: &[u8]) -> Result<Self, AttestationError> {
        limit("document", bytes.len(), MAX_DOCUMENT)?;
        let outer = match decode(bytes, "document")? {
            Value::Tag(TAG_COSE_SIGN1, inner) => *inner,
            Value::Tag(tag, _) => {
                return Err(malformed(format!(
                    "the document has CBOR tag {tag}, not COSE_Sign1 (18)"
                )))
            }
            other => other,
        };
        let Value::Array(parts) = outer else {
            return Err(malformed("the document is not a COSE_Sign1 array"));
        };
        let Ok::<[Value; 4], _>([protected, unprotected, payload, signature]) = parts.try_into() else {
            return Err(malformed("a COSE_Sign1 array has exactly four elements"));
        };
        let protected = take_bytes(protected, "protected header", 64)?;
        if !matches!(unprotected, Value::Map(_)) {
            return Err(malformed("the unprotected header is not a map"));
        }
        let payload = take_bytes(payload, "payload", MAX_DOCUMENT)?;
        let signature = take_bytes(signature, "signature", 132)?;
        check_algorithm(&protected)?;
        let mut document = Self {
            protected,
            payload,
            signature,
            module_id: String::new(),
            digest: String::new(),
            timestamp_ms: 0,
            pcrs: BTreeMap::new(),
            certificate: Vec::new(),
            cabundle: Vec::new(),
            public_key: None,
            user_data: None,
            nonce: None,
        };
        document.read_payload()?;
        Ok(document)
    }

    fn read_payload(&mut self) -> Result<(), AttestationError> {
        let Value::Map(entries) = decode(&self.payload, "payload")? else {
            return Err(malformed("the payload is not a map"));
        };
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(malformed("a payload key is not text"));
            };
            if seen.contains(&key) {
                return Err(malformed(format!("the payload has {key} twice")));
            }
            match key.as_str() {
                "module_id" => {
                    let Value::Text(id) = value else {
                        return Err(malformed("module_id is not text"));
                    };
                    limit("module_id", id.len(), MAX_MODULE_ID)?;
                    if id.is_empty() {
                        return Err(malformed("module_id is empty"));
                    }
                    self.module_id = id;
                }
                "digest" => {
                    let Value::Text(digest) = value else {
                        return Err(malformed("digest is not text"));
                    };
                    if digest != "SHA384" {
                        return Err(malformed(format!("digest is {digest:?}; only SHA384 is defined")));
                    }
                    self.digest = digest;
                }
                "timestamp" => {
                    let Value::Integer(t) = value else {
                        return Err(malformed("timestamp is not an integer"));
                    };
                    self.timestamp_ms = u64::try_from(i128::from(t))
                        .ok()
                        .filter(|t| *t > 0)
                        .ok_or_else(|| malformed("timestamp is not a positive number of milliseconds"))?;
                }
                "pcrs" => self.pcrs = read_pcrs(value)?,
                "certificate" => self.certificate = take_bytes(value, "certificate", MAX_CERTIFICATE)?,
                "cabundle" => {
                    let Value::Array(certs) = value else {
                        return Err(malformed("cabundle is not an array"));
                    };
                    limit("cabundle", certs.len(), MAX_BUNDLE)?;
                    if certs.is_empty() {
                        return Err(malformed("cabundle is empty"));
                    }
                    self.cabundle = certs
                        .into_iter()
                        .map(|c| take_bytes(c, "cabundle certificate", MAX_CERTIFICATE))
                        .collect::<Result<_, _>>()?;
                }
                "public_key" => self.public_key = take_optional(value, "public_key")?,
                "user_data" => self.user_data = take_optional(value, "user_data")?,
                "nonce" => self.nonce = take_optional(value, "nonce")?,
                other => return Err(malformed(format!("the payload has an unknown field {other:?}"))),
            }
            seen.push(key);
        }
        for field in [
            "module_id",
            "digest",
            "timestamp",
            "pcrs",
            "certificate",
            "cabundle",
            "public_key",
            "user_data",
            "nonce",
        ] {
            if !seen.iter().any(|k| k == field) {
                return Err(malformed(format!("the payload has no {field}")));
            }
        }
        if self.certificate.is_empty() {
            return Err(malformed("certificate is empty"));
        }
        Ok(())
    }
}

fn check_algorithm(protected: &[u8]) -> Result<(), AttestationError> {
    let Value::Map(entries) = decode(protected, "protected header")? else {
        return Err(malformed("the protected header is not a map"));
    };
    let mut alg = None;
    for (key, value) in entries {
        match (key, value) {
            // A second alg could make two parsers disagree on the algorithm (RFC 9052
            // section 3: labels are unique); refused as in the payload.
            (Value::Integer(k), _) if i128::from(k) == HEADER_ALG && alg.is_some() => {
                return Err(malformed("the protected header has alg twice"));
            }
            (Value::Integer(k), v) if i128::from(k) == HEADER_ALG => alg = Some(v),
            // Any other protected parameter (crit, content type...) is not understood here.
            (k, _) => {
                return Err(malformed(format!(
                    "the protected header has a parameter this verifier does not understand ({k:?})"
                )))
            }
        }
    }
    match alg {
        Some(Value::Integer(a)) if i128::from(a) == ES384 => Ok(()),
        Some(other) => Err(AttestationError::Algorithm(format!("{other:?}"))),
        None => Err(AttestationError::Algorithm("(none)".into())),
    }
}

fn read_pcrs(value: Value) -> Result<BTreeMap<u32, Vec<u8>>, AttestationError> {
    let Value::Map(entries) = value else {
        return Err(malformed("pcrs is not a map"));
    };
    limit("pcrs", entries.len(), MAX_PCRS)?;
    let mut pcrs = BTreeMap::new();
    for (index, value) in entries {
        let index = match index {
            Value::Integer(i) => u32::try_from(i128::from(i)).ok().filter(|i| (*i as usize) < MAX_PCRS),
            _ => None,
        }
        .ok_or_else(|| malformed("a PCR index is not an integer from 0 to 31"))?;
        let Value::Bytes(bytes) = value else {
            return Err(malformed(format!("PCR{index} is not a byte string")));
        };
        if bytes.len() != 48 {
            return Err(malformed(format!(
                "PCR{index} is {} bytes; SHA-384 PCRs are 48",
                bytes.len()
            )));
        }
        if pcrs.insert(index, bytes).is_some() {
            return Err(malformed(format!("PCR{index} appears twice")));
        }
    }
    if pcrs.is_empty() {
        return Err(malformed("pcrs is empty"));
    }
    Ok(pcrs)
}

/// Encodes an integer key for [`Value`] maps.
pub(crate) fn int(i: u64) -> Value {
    Value::Integer(Integer::from(i))
}
