//! The certificate chain of an attestation document: leaf (the `certificate` field), then the
//! `cabundle` from the leaf's issuer up to the root, which must be the pinned trust root byte
//! for byte; a root is never trusted because the document carries it.
//!
//! Each certificate is checked against its issuer: names chain, the signature (ECDSA P-384 /
//! SHA-384, the only algorithm AWS uses; anything else fails closed) verifies over the
//! certificate's raw `tbsCertificate` bytes, issuers are CAs whose path length allows the
//! chain below them and whose key usage (when given) allows certificate signing, the leaf is
//! not a CA and its key usage (when given) allows digital signatures, no certificate carries an
//! extension twice or a critical extension this verifier does not understand (RFC 5280
//! section 4.2), and every certificate is valid at the explicit verification time. [`ChainCache`] remembers bundles whose signatures were verified, so
//! later documents from the same enclave cost two signature checks instead of five.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};
use spki::der::{Decode, Encode};
use spki::ObjectIdentifier;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::Certificate;

use super::{rfc3339_ms, AttestationError};

/// RFC 5758 section 3.2: ecdsa-with-SHA384.
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// RFC 5480: id-ecPublicKey.
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// RFC 5480: secp384r1.
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// RFC 5280 section 4.2.1.9: basicConstraints.
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// RFC 5280 section 4.2.1.3: keyUsage.
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// The critical extensions this verifier understands; any other critical one fails closed.
const UNDERSTOOD: [ObjectIdentifier; 2] = [BASIC_CONSTRAINTS, KEY_USAGE];

/// Why text or bytes are not a trust root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustRootError {
    /// Not PEM.
    #[error("not a PEM certificate: {0}")]
    NotPem(String),
    /// PEM of something else.
    #[error("the PEM holds a {0:?}, not a CERTIFICATE")]
    Label(String),
    /// Not an X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    NotCertificate(String),
}

/// The root certificate chains must end in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    der: Vec<u8>,
}

/// The AWS Nitro Enclaves root (G1), as AWS publishes it.
const AWS_ROOT_PEM: &str = include_str!("aws_nitro_enclaves_root_g1.pem");
/// Its SHA-256 fingerprint, as AWS documents it; the embedded copy is checked against it.
pub const AWS_ROOT_SHA256: &str = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

impl TrustRoot {
    /// The pinned AWS Nitro Enclaves root G1.
    ///
    /// # Panics
    /// Never in a correct build: the embedded certificate is checked against its published
    /// fingerprint by the tests.
    #[must_use]
    pub fn aws() -> Self {
        let root = Self::from_pem(AWS_ROOT_PEM).expect("the embedded AWS root parses");
        assert_eq!(
            root.sha256(),
            AWS_ROOT_SHA256,
            "the embedded AWS root is the published one"
        );
        root
    }

    /// A root from a PEM certificate.
    ///
    /// # Errors
    /// A [`TrustRootError`] when the text is not one PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Self, TrustRootError> {
        let (label, der) =
            pem_rfc7468::decode_vec(pem.trim().as_bytes()).map_err(|e| TrustRootError::NotPem(e.to_string()))?;
        if label != "CERTIFICATE" {
            return Err(TrustRootError::Label(label.to_owned()));
        }
        Self::from_der(der)
    }

    /// A root from DER.
    ///
    /// # Errors
    /// [`TrustRootError::NotCertificate`] when the bytes are not a certificate.
    pub fn from_der(der: Vec<u8>) -> Result<Self, TrustRootError> {
        Certificate::from_der(&der).map_err(|e| TrustRootError::NotCertificate(e.to_string()))?;
        Ok(Self { der })
    }

    /// The DER bytes.
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The SHA-256 fingerprint, hex.
    #[must_use]
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }
}

/// A certificate reduced to what chain checks need.
#[derive(Debug, Clone)]
struct Checked {
    position: String,
    tbs: Vec<u8>,
    signature: Vec<u8>,
    signature_algorithm: ObjectIdentifier,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    /// SEC1 point of a P-384 key; `None` for any other key.
    p384_point: Option<Vec<u8>>,
    not_before_ms: u64,
    not_after_ms: u64,
    basic_constraints: Option<BasicConstraints>,
    key_usage: Option<KeyUsage>,
}

fn chain_error(position: &str, reason: impl Into<String>) -> AttestationError {
    AttestationError::Chain {
        position: position.to_owned(),
        reason: reason.into(),
    }
}

fn to_ms(time: &x509_cert::time::Time) -> u64 {
    u64::try_from(time.to_unix_duration().as_millis()).unwrap_or(u64::MAX)
}

impl Checked {
    fn parse(der: &[u8], position: &str) -> Result<Self, AttestationError> {
        let cert = Certificate::from_der(der)
            .map_err(|e| chain_error(position, format!("it does not parse as X.509 DER ({e})")))?;
        let tbs = cert
            .tbs_certificate
            .to_der()
            .map_err(|e| chain_error(position, e.to_string()))?;
        // DER is canonical: the strict decode above succeeded, so re-encoding gives back the
        // exact bytes that were signed. Check it anyway rather than trust it.
        let start = match der.get(1) {
            Some(n) if *n < 0x80 => 2,
            Some(n) => 2 + usize::from(n & 0x7f),
            None => 0,
        };
        if der.get(start..start + tbs.len()) != Some(tbs.as_slice()) {
            return Err(chain_error(position, "its tbsCertificate is not in canonical DER"));
        }
        let spki = &cert.tbs_certificate.subject_public_key_info;
        let is_p384 = spki.algorithm.oid == EC_PUBLIC_KEY
            && spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                == Some(SECP384R1);
        let extensions: Vec<_> = cert.tbs_certificate.extensions.iter().flatten().collect();
        for (i, extension) in extensions.iter().enumerate() {
            if extensions[..i].iter().any(|e| e.extn_id == extension.extn_id) {
                return Err(chain_error(
                    position,
                    format!(
                        "it carries the extension {} twice (RFC 5280 section 4.2)",
                        extension.extn_id
                    ),
                ));
            }
            if extension.critical && !UNDERSTOOD.contains(&extension.extn_id) {
                return Err(chain_error(
                    position,
                    format!(
                        "it has a critical extension {} that this verifier does not understand (RFC 5280 section 4.2)",
                        extension.extn_id
                    ),
                ));
            }
        }
        let basic_constraints = extensions
            .iter()
            .find(|e| e.extn_id == BASIC_CONSTRAINTS)
            .map(|e| BasicConstraints::from_der(e.extn_value.as_bytes()))
            .transpose()
            .map_err(|e| chain_error(position, format!("its basicConstraints do not parse ({e})")))?;
        let key_usage = extensions
            .iter()
            .find(|e| e.extn_id == KEY_USAGE)
            .map(|e| KeyUsage::from_der(e.extn_value.as_bytes()))
            .transpose()
            .map_err(|e| chain_error(position, format!("its keyUsage does not parse ({e})")))?;
        let validity = &cert.tbs_certificate.validity;
        Ok(Self {
            position: position.to_owned(),
            tbs,
            signature: cert.signature.raw_bytes().to_vec(),
            signature_algorithm: cert.signature_algorithm.oid,
            subject: cert.tbs_certificate.subject.to_der().unwrap_or_default(),
            issuer: cert.tbs_certificate.issuer.to_der().unwrap_or_default(),
            p384_point: is_p384.then(|| spki.subject_public_key.raw_bytes().to_vec()),
            not_before_ms: to_ms(&validity.not_before),
            not_after_ms: to_ms(&validity.not_after),
            basic_constraints,
            key_usage,
        })
    }

    /// Checks that `self` was issued and signed by `issuer`.
    fn signed_by(&self, issuer: &Checked) -> Result<(), AttestationError> {
        if self.issuer != issuer.subject {
            return Err(chain_error(
                &self.position,
                format!("its issuer is not the subject of {}", issuer.position),
            ));
        }
        if self.signature_algorithm != ECDSA_WITH_SHA384 {
            return Err(chain_error(
                &self.position,
                format!("it is signed with {}, not ecdsa-with-SHA384", self.signature_algorithm),
            ));
        }
        let key = issuer
            .p384_point
            .as_ref()
            .ok_or_else(|| chain_error(&issuer.position, "its key is not an ECDSA P-384 key"))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_ASN1, key)
            .verify(&self.tbs, &self.signature)
            .map_err(|_| {
                chain_error(
                    &self.position,
                    format!("its signature does not verify with the key of {}", issuer.position),
                )
            })
    }

    fn valid_at(&self, at_ms: u64) -> Result<(), AttestationError> {
        if at_ms < self.not_before_ms || at_ms > self.not_after_ms {
            return Err(AttestationError::Validity {
                position: self.position.clone(),
                at: rfc3339_ms(at_ms),
                not_before: rfc3339_ms(self.not_before_ms),
                not_after: rfc3339_ms(self.not_after_ms),
            });
        }
        Ok(())
    }

    /// Whether its key usage, when it states one, includes `usage`.
    fn allows(&self, usage: KeyUsages) -> bool {
        self.key_usage.as_ref().is_none_or(|ku| ku.0.contains(usage))
    }

    /// An issuer must be a CA whose path length allows `below` CA certificates under it, and
    /// whose key may sign certificates.
    fn may_issue(&self, below: usize) -> Result<(), AttestationError> {
        if !self.allows(KeyUsages::KeyCertSign) {
            return Err(chain_error(
                &self.position,
                "it issues certificates but its keyUsage does not allow keyCertSign (RFC 5280 section 4.2.1.3)",
            ));
        }
        match &self.basic_constraints {
            Some(bc) if bc.ca => match bc.path_len_constraint {
                Some(limit) if usize::from(limit) < below => Err(chain_error(
                    &self.position,
                    format!("its path length constraint {limit} does not allow the {below} CA certificate(s) below it"),
                )),
                _ => Ok(()),
            },
            _ => Err(chain_error(
                &self.position,
                "it issues certificates but is not a CA (basicConstraints cA is not set)",
            )),
        }
    }
}

/// The verified part of a bundle: intermediates whose signatures and CA constraints checked
/// out, kept for their validity windows and the last one's key.
#[derive(Debug)]
struct VerifiedBundle {
    certificates: Vec<Checked>,
}

/// Bundles already verified, by the SHA-256 of their certificates.
#[derive(Debug, Default)]
pub struct ChainCache {
    bundles: Mutex<HashMap<[u8; 32], Arc<VerifiedBundle>>>,
}

/// How many bundles a cache keeps; a deployment sees a handful of intermediates.
const CACHE_LIMIT: usize = 64;

fn bundle_key(cabundle: &[Vec<u8>]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for cert in cabundle {
        hasher.update((cert.len() as u64).to_be_bytes());
        hasher.update(cert);
    }
    hasher.finalize().into()
}

fn verify_bundle(cabundle: &[Vec<u8>], root: &TrustRoot) -> Result<VerifiedBundle, AttestationError> {
    let first = cabundle.first().ok_or_else(|| chain_error("cabundle", "it is empty"))?;
    if first.as_slice() != root.der() {
        return Err(AttestationError::UntrustedRoot {
            found: hex::encode(Sha256::digest(first)),
            pinned: root.sha256(),
        });
    }
    let certificates: Vec<Checked> = cabundle
        .iter()
        .enumerate()
        .map(|(i, der)| Checked::parse(der, &format!("cabundle[{i}]")))
        .collect::<Result<_, _>>()?;
    let count = certificates.len();
    for (i, cert) in certificates.iter().enumerate() {
        // CA certificates below this one in the bundle (the leaf is not a CA).
        cert.may_issue(count - 1 - i)?;
        if i > 0 {
            cert.signed_by(&certificates[i - 1])?;
        }
    }
    Ok(VerifiedBundle { certificates })
}

/// Verifies the leaf and bundle at `at_ms` against `root`; returns the leaf's P-384 point.
///
/// # Errors
/// The first [`AttestationError`] found.
pub fn verify_chain(
    leaf: &[u8],
    cabundle: &[Vec<u8>],
    root: &TrustRoot,
    at_ms: u64,
    cache: Option<&ChainCache>,
) -> Result<Vec<u8>, AttestationError> {
    let key = bundle_key(cabundle);
    let cached = cache.and_then(|c| {
        c.bundles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    });
    let bundle = match cached {
        // The cache is keyed by the exact bundle bytes, so the root comparison it passed
        // still holds; only this root's bundles are cached (the key includes the root).
        Some(bundle) if cabundle.first().map(Vec::as_slice) == Some(root.der()) => bundle,
        _ => {
            let bundle = Arc::new(verify_bundle(cabundle, root)?);
            if let Some(cache) = cache {
                let mut bundles = cache.bundles.lock().unwrap_or_else(PoisonError::into_inner);
                if bundles.len() >= CACHE_LIMIT {
                    bundles.clear();
                }
                bundles.insert(key, Arc::clone(&bundle));
            }
            bundle
        }
    };
    for cert in &bundle.certificates {
        cert.valid_at(at_ms)?;
    }
    let leaf = Checked::parse(leaf, "certificate (leaf)")?;
    if leaf.basic_constraints.as_ref().is_some_and(|bc| bc.ca) {
        return Err(chain_error(&leaf.position, "the leaf is marked as a CA"));
    }
    if !leaf.allows(KeyUsages::DigitalSignature) {
        return Err(chain_error(
            &leaf.position,
            "its keyUsage does not allow digitalSignature, so it may not sign attestation documents (RFC 5280 section 4.2.1.3)",
        ));
    }
    let issuer = bundle
        .certificates
        .last()
        .ok_or_else(|| chain_error("cabundle", "it is empty"))?;
    leaf.signed_by(issuer)?;
    leaf.valid_at(at_ms)?;
    leaf.p384_point
        .ok_or_else(|| chain_error("certificate (leaf)", "its key is not an ECDSA P-384 key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints as Bc, CertificateParams, CustomExtension, IsCa, Issuer, KeyPair, KeyUsagePurpose as Ku,
    };

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()
    }

    fn ca(name: &str, usages: Vec<Ku>) -> CertificateParams {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(Bc::Unconstrained);
        params.key_usages = usages;
        params
    }

    /// A chain root -> intermediate -> leaf, the intermediate and leaf shaped by `tweak`.
    fn chain(
        intermediate_usages: Vec<Ku>,
        leaf_usages: Vec<Ku>,
        leaf_extensions: impl IntoIterator<Item = CustomExtension>,
    ) -> (Vec<u8>, Vec<Vec<u8>>, TrustRoot) {
        let (root_key, inter_key, leaf_key) = (key(), key(), key());
        let root_params = ca("root", vec![Ku::KeyCertSign, Ku::CrlSign]);
        let root = root_params.self_signed(&root_key).unwrap();
        let inter_params = ca("intermediate", intermediate_usages);
        let inter = inter_params
            .signed_by(&inter_key, &Issuer::new(root_params.clone(), &root_key))
            .unwrap();
        let mut leaf_params = CertificateParams::new(vec![]).unwrap();
        leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "leaf");
        leaf_params.key_usages = leaf_usages;
        leaf_params.custom_extensions.extend(leaf_extensions);
        let leaf = leaf_params
            .signed_by(&leaf_key, &Issuer::new(inter_params, &inter_key))
            .unwrap();
        (
            leaf.der().to_vec(),
            vec![root.der().to_vec(), inter.der().to_vec()],
            TrustRoot::from_der(root.der().to_vec()).unwrap(),
        )
    }

    fn now() -> u64 {
        u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp() * 1000).unwrap()
    }

    fn checked(leaf: &[u8], bundle: &[Vec<u8>], root: &TrustRoot) -> Result<Vec<u8>, AttestationError> {
        verify_chain(leaf, bundle, root, now(), None)
    }

    #[test]
    fn a_well_formed_chain_verifies() {
        let (leaf, bundle, root) = chain(vec![Ku::KeyCertSign], vec![Ku::DigitalSignature], None);
        checked(&leaf, &bundle, &root).unwrap();
        // No keyUsage at all means no restriction (RFC 5280 section 4.2.1.3).
        let (leaf, bundle, root) = chain(vec![], vec![], None);
        checked(&leaf, &bundle, &root).unwrap();
    }

    #[test]
    fn an_issuer_whose_key_may_not_sign_certificates_is_refused() {
        let (leaf, bundle, root) = chain(vec![Ku::DigitalSignature], vec![Ku::DigitalSignature], None);
        let err = checked(&leaf, &bundle, &root).unwrap_err();
        assert!(err.to_string().contains("keyCertSign"), "{err}");
        assert!(err.to_string().contains("cabundle[1]"), "{err}");
    }

    #[test]
    fn a_leaf_whose_key_may_not_sign_documents_is_refused() {
        let (leaf, bundle, root) = chain(vec![Ku::KeyCertSign], vec![Ku::KeyEncipherment], None);
        let err = checked(&leaf, &bundle, &root).unwrap_err();
        assert!(err.to_string().contains("digitalSignature"), "{err}");
    }

    #[test]
    fn an_unknown_critical_extension_fails_closed_and_a_non_critical_one_does_not() {
        let oid = [1, 3, 6, 1, 4, 1, 55555, 1];
        let mut critical = CustomExtension::from_oid_content(&oid, vec![0x05, 0x00]);
        critical.set_criticality(true);
        let (leaf, bundle, root) = chain(vec![Ku::KeyCertSign], vec![Ku::DigitalSignature], Some(critical));
        let err = checked(&leaf, &bundle, &root).unwrap_err();
        assert!(
            err.to_string().contains("critical extension 1.3.6.1.4.1.55555.1"),
            "{err}"
        );
        let plain = || CustomExtension::from_oid_content(&oid, vec![0x05, 0x00]);
        let (leaf, bundle, root) = chain(vec![Ku::KeyCertSign], vec![Ku::DigitalSignature], Some(plain()));
        checked(&leaf, &bundle, &root).unwrap();
        // The same extension twice: which one would a verifier read? Refused.
        let (leaf, bundle, root) = chain(vec![Ku::KeyCertSign], vec![Ku::DigitalSignature], [plain(), plain()]);
        let err = checked(&leaf, &bundle, &root).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
