//! Parsing an attestation document: COSE_Sign1 around the Nitro payload.
//!
//! Accepted: `[protected: bstr, unprotected: map, payload: bstr, signature: bstr]`, tagged
//! (18) or untagged, nothing after it. The protected header must name ES384. The raw payload
//! bytes are kept for the signature.
//!
//! Two kinds of document share this envelope, told apart by the payload's PCR field
//! ([`DocumentKind`]):
//! - a Nitro Enclave's, from its NSM (AWS Nitro Enclaves User Guide, "Attestation document
//!   specification"): a map of exactly nine fields, `module_id`, `digest`, `timestamp`,
//!   `pcrs`, `certificate`, `cabundle`, `public_key`, `user_data`, `nonce`, all present, the
//!   last three possibly null (as every NSM writes them);
//! - an EC2 instance's, from its NitroTPM (Amazon EC2 User Guide, "Validate a NitroTPM
//!   Attestation Document"): the same fields with `nitrotpm_pcrs` in place of `pcrs` (the
//!   instance's TPM PCRs, 0 to 23 on EC2, SHA-384), and `public_key`, `user_data` and `nonce`
//!   optional (`?` in AWS's CDDL): absent or null. The signature (COSE_Sign1, ES384), the
//!   certificate chain to the AWS Nitro root and every size limit are the enclave document's.
//!
//! A payload holding both PCR fields, or neither, is malformed: which hardware signed it
//! would be ambiguous.

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

/// Which attestation a document is, as its payload's PCR field says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DocumentKind {
    /// A Nitro Enclave's document (`pcrs`: the enclave image's PCR0 to PCR15).
    #[default]
    Enclave,
    /// An EC2 instance's NitroTPM document (`nitrotpm_pcrs`: its TPM's PCRs, as the firmware
    /// and boot measured them).
    NitroTpm,
}

/// A name that is no [`DocumentKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a document kind; use enclave or nitrotpm")]
pub struct UnknownDocumentKind(pub String);

impl DocumentKind {
    /// The payload field holding the PCRs.
    #[must_use]
    pub fn pcr_field(self) -> &'static str {
        match self {
            Self::Enclave => "pcrs",
            Self::NitroTpm => "nitrotpm_pcrs",
        }
    }

    /// `enclave` or `nitrotpm`, as the CLI and the provider's state say it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enclave => "enclave",
            Self::NitroTpm => "nitrotpm",
        }
    }

    /// The kind of document a box booted from an image of `format` presents: an EIF runs as
    /// a Nitro Enclave, a UKI disk boots an instance with NitroTPM.
    #[must_use]
    pub fn of_format(format: crate::image::spec::ImageFormat) -> Self {
        match format {
            crate::image::spec::ImageFormat::Eif => Self::Enclave,
            crate::image::spec::ImageFormat::Uki => Self::NitroTpm,
        }
    }

    /// The PCRs that measure the image a box of this kind booted, and so are known before it
    /// runs (`safebox_image`'s measurements): an enclave's PCR0 (the EIF), PCR1 (its kernel
    /// and first ramdisk) and PCR2 (the other ramdisks); a NitroTPM's PCR4 (the UKI as the
    /// firmware's boot manager loaded it), PCR7 (the Secure Boot policy) and PCR12 (what
    /// systemd-stub adds to the UKI's own command line: nothing, on a Safebox disk). A NitroTPM's
    /// other PCRs measure the firmware and the platform, which no image decides.
    #[must_use]
    pub fn image_pcrs(self) -> [u32; 3] {
        match self {
            Self::Enclave => [0, 1, 2],
            Self::NitroTpm => [4, 7, 12],
        }
    }

    /// The kind whose [`Self::image_pcrs`] hold `index`, if one's do.
    #[must_use]
    pub fn measuring(index: u32) -> Option<Self> {
        [Self::Enclave, Self::NitroTpm]
            .into_iter()
            .find(|kind| kind.image_pcrs().contains(&index))
    }

    /// The kind named `name` (`enclave` or `nitrotpm`).
    ///
    /// # Errors
    /// [`UnknownDocumentKind`], which names the two accepted names.
    pub fn from_name(name: &str) -> Result<Self, UnknownDocumentKind> {
        match name {
            "enclave" => Ok(Self::Enclave),
            "nitrotpm" => Ok(Self::NitroTpm),
            other => Err(UnknownDocumentKind(other.to_owned())),
        }
    }

    /// What a user reads: "a Nitro Enclave document (`pcrs`)".
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Enclave => "a Nitro Enclave document (pcrs)",
            Self::NitroTpm => "a NitroTPM document (nitrotpm_pcrs)",
        }
    }
}

impl std::fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed, not yet verified, attestation document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationDocument {
    /// Which attestation it is: the payload held `pcrs` or `nitrotpm_pcrs`.
    pub kind: DocumentKind,
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
    /// PCR index to value (from `pcrs` or `nitrotpm_pcrs`, as [`Self::kind`] says).
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

/// A CBOR value's type, for messages.
fn cbor_type(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) => "integer",
        Value::Bytes(_) => "byte string",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bool(_) => "bool",
        Value::Null => "null",
        Value::Tag(..) => "tag",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        _ => "unknown",
    }
}

fn limit(field: &'static str, (size, unit): (usize, &'static str), limit: usize) -> Result<(), AttestationError> {
    if size > limit {
        Err(AttestationError::TooLarge {
            field,
            size,
            limit,
            unit,
        })
    } else {
        Ok(())
    }
}

fn take_bytes(value: Value, field: &'static str, max: usize) -> Result<Vec<u8>, AttestationError> {
    match value {
        Value::Bytes(b) => {
            limit(field, (b.len(), "bytes"), max)?;
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
        limit("document", (bytes.len(), "bytes"), MAX_DOCUMENT)?;
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
            kind: DocumentKind::Enclave,
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
                    limit("module_id", (id.len(), "bytes"), MAX_MODULE_ID)?;
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
                "pcrs" | "nitrotpm_pcrs" => {
                    if seen.iter().any(|k| k == "pcrs" || k == "nitrotpm_pcrs") {
                        return Err(malformed(
                            "the payload has both pcrs and nitrotpm_pcrs, so which hardware signed it is ambiguous",
                        ));
                    }
                    self.kind = if key == "pcrs" {
                        DocumentKind::Enclave
                    } else {
                        DocumentKind::NitroTpm
                    };
                    self.pcrs = read_pcrs(value, self.kind.pcr_field())?;
                }
                "certificate" => self.certificate = take_bytes(value, "certificate", MAX_CERTIFICATE)?,
                "cabundle" => {
                    let Value::Array(certs) = value else {
                        return Err(malformed("cabundle is not an array"));
                    };
                    limit("cabundle", (certs.len(), "certificates"), MAX_BUNDLE)?;
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
        if !seen.iter().any(|k| k == "pcrs" || k == "nitrotpm_pcrs") {
            return Err(malformed("the payload has no pcrs (nor nitrotpm_pcrs)"));
        }
        // Every NSM writes the three optional fields, null when unset; AWS's NitroTPM CDDL
        // marks them optional (`?`), so there they may be absent.
        let optional_may_be_absent = self.kind == DocumentKind::NitroTpm;
        for (field, optional) in [
            ("module_id", false),
            ("digest", false),
            ("timestamp", false),
            ("certificate", false),
            ("cabundle", false),
            ("public_key", true),
            ("user_data", true),
            ("nonce", true),
        ] {
            let may_be_absent = optional && optional_may_be_absent;
            if !may_be_absent && !seen.iter().any(|k| k == field) {
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
        Some(Value::Integer(a)) => Err(AttestationError::Algorithm(i128::from(a).to_string())),
        Some(other) => Err(AttestationError::Algorithm(format!(
            "of CBOR type {}",
            cbor_type(&other)
        ))),
        None => Err(AttestationError::Algorithm("(none)".into())),
    }
}

fn read_pcrs(value: Value, field: &'static str) -> Result<BTreeMap<u32, Vec<u8>>, AttestationError> {
    let Value::Map(entries) = value else {
        return Err(malformed(format!("{field} is not a map")));
    };
    limit(field, (entries.len(), "PCRs"), MAX_PCRS)?;
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
        return Err(malformed(format!("{field} is empty")));
    }
    Ok(pcrs)
}

/// Encodes an integer key for [`Value`] maps.
pub(crate) fn int(i: u64) -> Value {
    Value::Integer(Integer::from(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A COSE_Sign1 around `payload` (the signature is not checked by parsing).
    fn envelope(payload: &[(&str, Value)]) -> Vec<u8> {
        let map = Value::Map(
            payload
                .iter()
                .map(|(k, v)| (Value::Text((*k).to_owned()), v.clone()))
                .collect(),
        );
        let mut payload_bytes = Vec::new();
        ciborium::ser::into_writer(&map, &mut payload_bytes).unwrap();
        let cose = Value::Array(vec![
            Value::Bytes(vec![0xa1, 0x01, 0x38, 0x22]),
            Value::Map(vec![]),
            Value::Bytes(payload_bytes),
            Value::Bytes(vec![0; 96]),
        ]);
        let mut out = Vec::new();
        ciborium::ser::into_writer(&cose, &mut out).unwrap();
        out
    }

    fn pcrs() -> Value {
        Value::Map((0..24).map(|i| (int(i), Value::Bytes(vec![i as u8; 48]))).collect())
    }

    fn fields(pcr_field: &'static str) -> Vec<(&'static str, Value)> {
        vec![
            (
                "module_id",
                Value::Text("i-0123456789abcdef0-tpm0123456789abcdef".into()),
            ),
            ("digest", Value::Text("SHA384".into())),
            ("timestamp", int(1_760_000_000_000)),
            (pcr_field, pcrs()),
            ("certificate", Value::Bytes(vec![0x30; 10])),
            ("cabundle", Value::Array(vec![Value::Bytes(vec![0x30; 10])])),
            ("public_key", Value::Null),
            ("user_data", Value::Null),
            ("nonce", Value::Bytes(vec![7; 32])),
        ]
    }

    #[test]
    fn each_kind_has_its_own_image_pcrs() {
        assert_eq!(
            DocumentKind::of_format(crate::image::spec::ImageFormat::Uki).image_pcrs(),
            [4, 7, 12]
        );
        assert_eq!(
            DocumentKind::of_format(crate::image::spec::ImageFormat::Eif).image_pcrs(),
            [0, 1, 2]
        );
        assert_eq!(DocumentKind::measuring(12), Some(DocumentKind::NitroTpm));
        assert_eq!(DocumentKind::measuring(0), Some(DocumentKind::Enclave));
        assert_eq!(DocumentKind::measuring(8), None);
    }

    #[test]
    fn the_pcr_field_names_the_kind() {
        let enclave = AttestationDocument::parse(&envelope(&fields("pcrs"))).unwrap();
        assert_eq!(enclave.kind, DocumentKind::Enclave);
        let tpm = AttestationDocument::parse(&envelope(&fields("nitrotpm_pcrs"))).unwrap();
        assert_eq!(tpm.kind, DocumentKind::NitroTpm);
        assert_eq!(tpm.pcrs.len(), 24);
        assert_eq!(tpm.pcrs[&12], vec![12; 48]);
        assert_eq!(tpm.nonce, Some(vec![7; 32]));
    }

    #[test]
    fn both_pcr_fields_or_neither_is_malformed() {
        let mut both = fields("pcrs");
        both.push(("nitrotpm_pcrs", pcrs()));
        let err = AttestationDocument::parse(&envelope(&both)).unwrap_err();
        assert!(err.to_string().contains("both pcrs and nitrotpm_pcrs"), "{err}");
        let neither: Vec<_> = fields("pcrs").into_iter().filter(|(k, _)| *k != "pcrs").collect();
        let err = AttestationDocument::parse(&envelope(&neither)).unwrap_err();
        assert!(err.to_string().contains("has no pcrs"), "{err}");
    }

    #[test]
    fn only_nitrotpm_documents_may_leave_out_the_optional_fields() {
        for absent in ["public_key", "user_data", "nonce"] {
            let tpm: Vec<_> = fields("nitrotpm_pcrs")
                .into_iter()
                .filter(|(k, _)| *k != absent)
                .collect();
            let parsed = AttestationDocument::parse(&envelope(&tpm)).unwrap();
            assert_eq!(parsed.kind, DocumentKind::NitroTpm);
            let enclave: Vec<_> = fields("pcrs").into_iter().filter(|(k, _)| *k != absent).collect();
            let err = AttestationDocument::parse(&envelope(&enclave)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("the attestation document is malformed: the payload has no {absent}")
            );
        }
        // The required ones stay required for NitroTPM documents.
        let tpm: Vec<_> = fields("nitrotpm_pcrs")
            .into_iter()
            .filter(|(k, _)| *k != "cabundle")
            .collect();
        assert!(AttestationDocument::parse(&envelope(&tpm))
            .unwrap_err()
            .to_string()
            .contains("has no cabundle"));
    }

    #[test]
    fn nitrotpm_pcrs_keep_the_pcr_limits() {
        let mut short = fields("nitrotpm_pcrs");
        short[3].1 = Value::Map(vec![(int(4), Value::Bytes(vec![0; 32]))]);
        let err = AttestationDocument::parse(&envelope(&short)).unwrap_err();
        assert!(err.to_string().contains("PCR4 is 32 bytes"), "{err}");
        let mut empty = fields("nitrotpm_pcrs");
        empty[3].1 = Value::Map(vec![]);
        let err = AttestationDocument::parse(&envelope(&empty)).unwrap_err();
        assert!(err.to_string().contains("nitrotpm_pcrs is empty"), "{err}");
        let mut many = fields("nitrotpm_pcrs");
        many[3].1 = Value::Map((0..33).map(|i| (int(i), Value::Bytes(vec![0; 48]))).collect());
        let err = AttestationDocument::parse(&envelope(&many)).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::TooLarge {
                    field: "nitrotpm_pcrs",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("nitrotpm_pcrs has 33 PCRs, over the limit of 32"),
            "{err}"
        );
    }
}
