//! The local backend's software NSM: a simulated Nitro hierarchy (a root, one intermediate,
//! a fresh three-hour leaf per document) kept in a folder of the `state_dir`, issuing
//! documents in exactly the AWS formats (untagged COSE_Sign1, ES384, the nine payload fields:
//! `pcrs` for an enclave document, `nitrotpm_pcrs` for a NitroTPM one, see
//! [`super::document`]).
//!
//! A box that boots a disk under QEMU signs its own documents inside the guest: the host
//! issues it one [`SimulatedLeaf`] (a P-384 key and its certificate under the intermediate,
//! valid as long as the hierarchy) when it launches, and hands it over as a PEM bundle
//! ([`SimulatedLeaf::to_pem`]): the key (`PRIVATE KEY`, PKCS #8), then the leaf certificate,
//! then the `cabundle` root first, each a `CERTIFICATE`. Every certificate's subject names the
//! hierarchy "Safebox SIMULATED attestation (not AWS)".
//!
//! Its root is generated on this machine and its keys sit on disk: it proves nothing about
//! hardware. The provider trusts it only when `attestation.allow_simulated = true`, and says
//! `simulated = true` wherever it did.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ciborium::value::Value;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};

use super::cbor;
use super::chain::{TrustRoot, TrustRootError};
use super::document::{int, DocumentKind};

/// How long a leaf certificate lives, as on AWS.
const LEAF_LIFETIME_MS: i64 = 3 * 60 * 60 * 1000;
/// How long before its issue a box's leaf is valid: the guest's clock (read from the emulated
/// RTC at boot, one-second resolution) may lag the host's a little.
const BOX_LEAF_BACKDATE_S: i64 = 300;
/// How long the simulated root and intermediate live.
const CA_LIFETIME_DAYS: i64 = 3650;
const ROOT_FILE: &str = "root.pem";
const INTERMEDIATE_FILE: &str = "intermediate.pem";
const INTERMEDIATE_KEY_FILE: &str = "intermediate.key.pem";

/// Why the software NSM failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulatedError {
    /// Reading or writing its folder.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificate generation or signing failed.
    #[error("the simulated attestation root could not {0}")]
    Crypto(String),
    /// Its folder or key is open to other users, who could then sign documents with it.
    #[error("the simulated attestation root's key must be private: {0}")]
    Private(#[from] crate::private::PrivateError),
}

/// What a document attests to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationRequest {
    /// Which document to issue: an enclave's (`pcrs`) or a NitroTPM one (`nitrotpm_pcrs`).
    pub kind: DocumentKind,
    /// The enclave's or instance's module id.
    pub module_id: String,
    /// PCR index to value (48 bytes each).
    pub pcrs: BTreeMap<u32, Vec<u8>>,
    /// Bound public key.
    pub public_key: Option<Vec<u8>>,
    /// Bound user data.
    pub user_data: Option<Vec<u8>>,
    /// The requester's nonce.
    pub nonce: Option<Vec<u8>>,
}

/// A simulated Nitro attestation hierarchy.
pub struct SimulatedNitro {
    root_der: Vec<u8>,
    intermediate_der: Vec<u8>,
    intermediate_key: KeyPair,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SimulatedError {
    let path = path.to_path_buf();
    move |source| SimulatedError::Io { action, path, source }
}

fn crypto(what: &str) -> impl FnOnce(rcgen::Error) -> SimulatedError + '_ {
    move |e| SimulatedError::Crypto(format!("{what} ({e})"))
}

fn ca_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, "ZZ");
    name.push(DnType::OrganizationName, "Safebox SIMULATED attestation (not AWS)");
    name.push(DnType::CommonName, common_name);
    name
}

fn intermediate_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name("safebox simulated nitro intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn pem(der: &[u8]) -> String {
    pem_rfc7468::encode_string("CERTIFICATE", pem_rfc7468::LineEnding::LF, der).unwrap_or_default()
}

fn read_pem(path: &Path) -> Result<Vec<u8>, SimulatedError> {
    let text = fs::read_to_string(path).map_err(io("reading", path))?;
    pem_rfc7468::decode_vec(text.as_bytes())
        .map(|(_, der)| der)
        .map_err(|e| SimulatedError::Crypto(format!("read {} ({e})", path.display())))
}

impl SimulatedNitro {
    /// Opens the hierarchy in `dir`, creating it on first use.
    ///
    /// # Errors
    /// I/O or key generation failures.
    pub fn open_or_create(dir: &Path) -> Result<Self, SimulatedError> {
        crate::private::create_dir(dir)?;
        if !dir.join(INTERMEDIATE_KEY_FILE).exists() {
            Self::create(dir)?;
        }
        let key_path = dir.join(INTERMEDIATE_KEY_FILE);
        let key_pem = crate::private::read_file(&key_path)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .ok_or_else(|| io("reading", &key_path)(std::io::ErrorKind::NotFound.into()))?;
        Ok(Self {
            root_der: read_pem(&dir.join(ROOT_FILE))?,
            intermediate_der: read_pem(&dir.join(INTERMEDIATE_FILE))?,
            intermediate_key: KeyPair::from_pem(&key_pem).map_err(crypto("load its intermediate key"))?,
        })
    }

    fn create(dir: &Path) -> Result<(), SimulatedError> {
        let now = time::OffsetDateTime::now_utc();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(crypto("generate a root key"))?;
        let mut root_params = CertificateParams::default();
        root_params.distinguished_name = ca_name("safebox simulated nitro root");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        root_params.not_before = now - time::Duration::days(1);
        root_params.not_after = now + time::Duration::days(CA_LIFETIME_DAYS);
        let root = root_params.self_signed(&root_key).map_err(crypto("sign its root"))?;
        let intermediate_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(crypto("generate an intermediate key"))?;
        let mut params = intermediate_params();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(CA_LIFETIME_DAYS);
        let intermediate = params
            .signed_by(&intermediate_key, &Issuer::new(root_params, &root_key))
            .map_err(crypto("sign its intermediate"))?;
        // The root's key is not needed again and is not kept.
        let staging = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        fs::create_dir(&staging).map_err(io("creating", &staging))?;
        fs::write(staging.join(ROOT_FILE), pem(root.der())).map_err(io("writing", &staging))?;
        fs::write(staging.join(INTERMEDIATE_FILE), pem(intermediate.der())).map_err(io("writing", &staging))?;
        let key_path = staging.join(INTERMEDIATE_KEY_FILE);
        fs::write(&key_path, intermediate_key.serialize_pem()).map_err(io("writing", &key_path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).map_err(io("protecting", &key_path))?;
        }
        for name in [ROOT_FILE, INTERMEDIATE_FILE, INTERMEDIATE_KEY_FILE] {
            // Another process may have created the hierarchy meanwhile; keep theirs.
            let target = dir.join(name);
            if !target.exists() {
                fs::rename(staging.join(name), &target).map_err(io("renaming into place", &target))?;
            }
        }
        let _ = fs::remove_dir_all(&staging);
        Ok(())
    }

    /// The simulated root, to trust when `allow_simulated` is set.
    ///
    /// # Errors
    /// Never for a hierarchy this type created.
    pub fn trust_root(&self) -> Result<TrustRoot, TrustRootError> {
        TrustRoot::from_der(self.root_der.clone())
    }

    /// Issues a document for `request` at `now_ms`, signed by a fresh leaf.
    ///
    /// # Errors
    /// Signing failures.
    pub fn attest(&self, request: &AttestationRequest, now_ms: u64) -> Result<Vec<u8>, SimulatedError> {
        let now = time_of(now_ms)?;
        let leaf = self.leaf(
            &request.module_id,
            now - time::Duration::seconds(3),
            now + time::Duration::milliseconds(LEAF_LIFETIME_MS),
        )?;
        leaf.attest(request, now_ms)
    }

    /// Issues the signing leaf of one box, for an agent that signs its documents itself: valid
    /// from a little before `now_ms` for as long as the hierarchy's CAs.
    ///
    /// # Errors
    /// Key generation or signing failures.
    pub fn issue_box_leaf(&self, module_id: &str, now_ms: u64) -> Result<SimulatedLeaf, SimulatedError> {
        let now = time_of(now_ms)?;
        self.leaf(
            module_id,
            now - time::Duration::seconds(BOX_LEAF_BACKDATE_S),
            now + time::Duration::days(CA_LIFETIME_DAYS),
        )
    }

    fn leaf(
        &self,
        module_id: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<SimulatedLeaf, SimulatedError> {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(crypto("generate a leaf key"))?;
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name = ca_name(module_id);
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::new(intermediate_params(), &self.intermediate_key);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(crypto("sign a leaf"))?;
        SimulatedLeaf::new(
            leaf_key.serialize_der(),
            leaf_cert.der().to_vec(),
            vec![self.root_der.clone(), self.intermediate_der.clone()],
        )
    }
}

fn time_of(now_ms: u64) -> Result<time::OffsetDateTime, SimulatedError> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .map_err(|e| SimulatedError::Crypto(format!("use the time {now_ms} ({e})")))
}

/// A signing leaf of the simulated hierarchy: what an agent inside a booted box holds to sign
/// its documents.
pub struct SimulatedLeaf {
    key_pkcs8: Vec<u8>,
    signer: EcdsaKeyPair,
    certificate: Vec<u8>,
    /// Root first, then the intermediate, as documents carry it.
    cabundle: Vec<Vec<u8>>,
}

impl std::fmt::Debug for SimulatedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SimulatedLeaf")
            .field("certificate_bytes", &self.certificate.len())
            .field("cabundle", &self.cabundle.len())
            .finish_non_exhaustive()
    }
}

impl SimulatedLeaf {
    fn new(key_pkcs8: Vec<u8>, certificate: Vec<u8>, cabundle: Vec<Vec<u8>>) -> Result<Self, SimulatedError> {
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &key_pkcs8, &SystemRandom::new())
            .map_err(|e| SimulatedError::Crypto(format!("load a leaf key: it is not a PKCS #8 P-384 key ({e})")))?;
        if cabundle.is_empty() {
            return Err(SimulatedError::Crypto(
                "use a leaf without its chain: the bundle names no root".into(),
            ));
        }
        Ok(Self {
            key_pkcs8,
            signer,
            certificate,
            cabundle,
        })
    }

    /// The root its chain ends in: what peers on the same local backend trust.
    ///
    /// # Errors
    /// When the bundle's first certificate is not a certificate.
    pub fn trust_root(&self) -> Result<TrustRoot, TrustRootError> {
        TrustRoot::from_der(self.cabundle[0].clone())
    }

    /// The PEM bundle handed to a box: `PRIVATE KEY`, then the leaf `CERTIFICATE`, then the
    /// `cabundle` root first.
    #[must_use]
    pub fn to_pem(&self) -> String {
        let mut out =
            pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &self.key_pkcs8).unwrap_or_default();
        for der in std::iter::once(&self.certificate).chain(&self.cabundle) {
            out.push_str(&pem(der));
        }
        out
    }

    /// Reads a bundle written by [`Self::to_pem`].
    ///
    /// # Errors
    /// [`SimulatedError::Crypto`] saying which block is missing or unreadable.
    pub fn from_pem(text: &str) -> Result<Self, SimulatedError> {
        let bad = |what: String| SimulatedError::Crypto(format!("read the box's attestation key bundle: {what}"));
        let mut blocks = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let after = &rest[start..];
            let label_end = after[11..]
                .find("-----")
                .ok_or_else(|| bad("a BEGIN line does not end".into()))?;
            let label = &after[11..11 + label_end];
            let end_line = format!("-----END {label}-----");
            let end = after
                .find(&end_line)
                .ok_or_else(|| bad(format!("the {label} block has no END line")))?;
            let block = &after[..end + end_line.len()];
            let (found, der) = pem_rfc7468::decode_vec(block.as_bytes()).map_err(|e| bad(format!("{label}: {e}")))?;
            blocks.push((found.to_owned(), der));
            rest = &after[end + end_line.len()..];
        }
        let mut blocks = blocks.into_iter();
        let key = match blocks.next() {
            Some((label, der)) if label == "PRIVATE KEY" => der,
            _ => return Err(bad("it does not start with a PRIVATE KEY block".into())),
        };
        let mut certificates = Vec::new();
        for (label, der) in blocks {
            if label != "CERTIFICATE" {
                return Err(bad(format!(
                    "a {label} block follows the key; only CERTIFICATE blocks may"
                )));
            }
            certificates.push(der);
        }
        if certificates.len() < 2 {
            return Err(bad(format!(
                "it holds {} certificate(s); the leaf and at least the root are needed",
                certificates.len()
            )));
        }
        let leaf = certificates.remove(0);
        Self::new(key, leaf, certificates)
    }

    /// Issues a document for `request` at `now_ms`, signed with this leaf.
    ///
    /// # Errors
    /// Encoding or signing failures.
    pub fn attest(&self, request: &AttestationRequest, now_ms: u64) -> Result<Vec<u8>, SimulatedError> {
        let optional = |v: &Option<Vec<u8>>| v.clone().map_or(Value::Null, Value::Bytes);
        let payload = Value::Map(vec![
            (Value::Text("module_id".into()), Value::Text(request.module_id.clone())),
            (Value::Text("digest".into()), Value::Text("SHA384".into())),
            (Value::Text("timestamp".into()), int(now_ms)),
            (
                Value::Text(request.kind.pcr_field().into()),
                Value::Map(
                    request
                        .pcrs
                        .iter()
                        .map(|(i, v)| (int(u64::from(*i)), Value::Bytes(v.clone())))
                        .collect(),
                ),
            ),
            (
                Value::Text("certificate".into()),
                Value::Bytes(self.certificate.clone()),
            ),
            (
                Value::Text("cabundle".into()),
                Value::Array(self.cabundle.iter().cloned().map(Value::Bytes).collect()),
            ),
            (Value::Text("public_key".into()), optional(&request.public_key)),
            (Value::Text("user_data".into()), optional(&request.user_data)),
            (Value::Text("nonce".into()), optional(&request.nonce)),
        ]);
        let mut payload_bytes = Vec::new();
        ciborium::ser::into_writer(&payload, &mut payload_bytes)
            .map_err(|e| SimulatedError::Crypto(format!("encode a payload ({e})")))?;
        // {1: -35}: alg ES384, exactly as AWS writes it.
        let protected = [0xa1, 0x01, 0x38, 0x22];
        let signature = self
            .signer
            .sign(&SystemRandom::new(), &cbor::sig_structure(&protected, &payload_bytes))
            .map_err(|e| SimulatedError::Crypto(format!("sign a document ({e})")))?;
        let mut document = Vec::with_capacity(payload_bytes.len() + 128);
        cbor::head(&mut document, 4, 4);
        cbor::bytes(&mut document, &protected);
        document.push(0xa0);
        cbor::bytes(&mut document, &payload_bytes);
        cbor::bytes(&mut document, signature.as_ref());
        Ok(document)
    }
}
