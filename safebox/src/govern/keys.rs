//! Signer public keys: the algorithms an approval may be signed with.
//!
//! Auditors bring keys from their own tooling (openssl, hardware tokens, cloud KMS), so keys
//! arrive as PEM `SubjectPublicKeyInfo` (RFC 5280 section 4.1.2.7) and are identified in policy
//! documents by their DER bytes, which do not depend on PEM line wrapping.

use base64::Engine as _;
use spki::der::Decode;
use spki::ObjectIdentifier;

/// RFC 8410 section 3: id-Ed25519.
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// RFC 5480 section 2.1.1: id-ecPublicKey.
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// RFC 5480 section 2.1.1.1: secp256r1.
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// RFC 5480 section 2.1.1.1: secp384r1.
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// The signature algorithms a signer's key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519 (RFC 8032), signing the approval message directly.
    Ed25519,
    /// ECDSA on NIST P-256 over SHA-256 of the approval message.
    EcdsaP256,
    /// ECDSA on NIST P-384 over SHA-384 of the approval message.
    EcdsaP384,
}

impl KeyAlgorithm {
    /// The name used in policy documents.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
        }
    }
}

/// Why a PEM text is not a usable signer key. Each message says what to give instead.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not PEM at all.
    #[error("is not a PEM public key ({reason}); give the output of `openssl pkey -pubout`, which starts with -----BEGIN PUBLIC KEY-----")]
    NotPem {
        /// What the PEM decoder said.
        reason: String,
    },
    /// A private key was given where a public key belongs.
    #[error("holds a private key ({label}); never put private keys in configuration: give only the public half, e.g. `openssl pkey -in key.pem -pubout`")]
    PrivateKey {
        /// The PEM label seen.
        label: String,
    },
    /// PEM with another label (a certificate, say).
    #[error("is a PEM \"{label}\", not a \"PUBLIC KEY\"; extract the public key, e.g. `openssl x509 -in cert.pem -pubkey -noout`")]
    WrongLabel {
        /// The PEM label seen.
        label: String,
    },
    /// The DER inside is not a SubjectPublicKeyInfo or the point is not on its curve.
    #[error("is not a valid {algorithm} public key: {reason}")]
    Malformed {
        /// The algorithm the key claimed.
        algorithm: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A well-formed key of an algorithm approvals cannot use.
    #[error(
        "uses {algorithm}, which Safebox approvals do not support; use an ed25519, ECDSA P-256 or ECDSA P-384 key"
    )]
    Unsupported {
        /// The algorithm (or curve) seen.
        algorithm: String,
    },
}

/// A signer's public key, checked to be a valid point of a supported algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    spki_der: Vec<u8>,
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY`.
    ///
    /// # Errors
    /// A [`KeyError`] saying what was given and what to give instead.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) =
            pem_rfc7468::decode_vec(pem.trim().as_bytes()).map_err(|e| KeyError::NotPem { reason: e.to_string() })?;
        if label.contains("PRIVATE KEY") {
            return Err(KeyError::PrivateKey {
                label: label.to_owned(),
            });
        }
        if label != "PUBLIC KEY" {
            return Err(KeyError::WrongLabel {
                label: label.to_owned(),
            });
        }
        Self::from_spki_der(&der)
    }

    /// Parses DER `SubjectPublicKeyInfo` bytes.
    ///
    /// # Errors
    /// A [`KeyError`] naming the algorithm and what was wrong.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der).map_err(|e| KeyError::Malformed {
            algorithm: "SubjectPublicKeyInfo",
            reason: e.to_string(),
        })?;
        let algorithm = if spki.algorithm.oid == OID_ED25519 {
            KeyAlgorithm::Ed25519
        } else if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters_oid().map_err(|e| KeyError::Malformed {
                algorithm: "EC",
                reason: format!("missing curve parameters: {e}"),
            })?;
            match curve {
                OID_P256 => KeyAlgorithm::EcdsaP256,
                OID_P384 => KeyAlgorithm::EcdsaP384,
                other => {
                    return Err(KeyError::Unsupported {
                        algorithm: format!("EC curve {other}"),
                    })
                }
            }
        } else {
            return Err(KeyError::Unsupported {
                algorithm: format!("algorithm {}", spki.algorithm.oid),
            });
        };
        let point = spki.subject_public_key.raw_bytes();
        // Keys are identified by algorithm and point, never by how the SPKI happened to be
        // encoded: a key is re-encoded from its parsed point (EC points uncompressed), so the
        // same key given twice, however encoded, is the same key and counts as one signer.
        let spki_der = match algorithm {
            KeyAlgorithm::Ed25519 => {
                // RFC 8410 section 3: the parameters MUST be absent for id-Ed25519.
                if spki.algorithm.parameters.is_some() {
                    return Err(KeyError::Malformed {
                        algorithm: algorithm.as_str(),
                        reason: "it carries algorithm parameters, which RFC 8410 section 3 forbids for Ed25519; export the key again with `openssl pkey -pubout`".into(),
                    });
                }
                let bytes = <[u8; 32]>::try_from(point).map_err(|_| KeyError::Malformed {
                    algorithm: algorithm.as_str(),
                    reason: format!("an Ed25519 key is 32 bytes, this one is {}", point.len()),
                })?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| KeyError::Malformed {
                    algorithm: algorithm.as_str(),
                    reason: e.to_string(),
                })?;
                spki::EncodePublicKey::to_public_key_der(&key).map(|d| d.into_vec())
            }
            KeyAlgorithm::EcdsaP256 => p256::PublicKey::from_sec1_bytes(point)
                .map_err(|_| KeyError::Malformed {
                    algorithm: algorithm.as_str(),
                    reason: "the point is not on the P-256 curve".into(),
                })
                .map(|key| spki::EncodePublicKey::to_public_key_der(&key).map(|d| d.into_vec()))?,
            KeyAlgorithm::EcdsaP384 => p384::PublicKey::from_sec1_bytes(point)
                .map_err(|_| KeyError::Malformed {
                    algorithm: algorithm.as_str(),
                    reason: "the point is not on the P-384 curve".into(),
                })
                .map(|key| spki::EncodePublicKey::to_public_key_der(&key).map(|d| d.into_vec()))?,
        }
        .map_err(|e| KeyError::Malformed {
            algorithm: algorithm.as_str(),
            reason: e.to_string(),
        })?;
        Ok(Self { algorithm, spki_der })
    }

    /// The key's algorithm.
    #[must_use]
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The DER `SubjectPublicKeyInfo`.
    #[must_use]
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The DER `SubjectPublicKeyInfo` in standard base64, as policy documents carry it.
    #[must_use]
    pub fn spki_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.spki_der)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    pub(crate) fn ed25519_pem(seed: u8) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap()
    }

    pub(crate) fn p256_pem(seed: u8) -> String {
        let key = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        key.public_key().to_public_key_pem(LineEnding::LF).unwrap()
    }

    pub(crate) fn p384_pem(seed: u8) -> String {
        let key = p384::SecretKey::from_slice(&[seed; 48]).unwrap();
        key.public_key().to_public_key_pem(LineEnding::LF).unwrap()
    }

    #[test]
    fn parses_the_three_supported_algorithms() {
        assert_eq!(
            PublicKey::from_pem(&ed25519_pem(1)).unwrap().algorithm(),
            KeyAlgorithm::Ed25519
        );
        assert_eq!(
            PublicKey::from_pem(&p256_pem(1)).unwrap().algorithm(),
            KeyAlgorithm::EcdsaP256
        );
        assert_eq!(
            PublicKey::from_pem(&p384_pem(1)).unwrap().algorithm(),
            KeyAlgorithm::EcdsaP384
        );
    }

    #[test]
    fn line_wrapping_does_not_change_identity() {
        let pem = p384_pem(2);
        let rewrapped = format!("\n  {}\n", pem.replace('\n', "\r\n"));
        assert_eq!(
            PublicKey::from_pem(&pem).unwrap(),
            PublicKey::from_pem(&rewrapped).unwrap()
        );
    }

    #[test]
    fn refuses_private_keys_and_says_so() {
        let key = p256::SecretKey::from_slice(&[3; 32]).unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let err = PublicKey::from_pem(&pem).unwrap_err();
        assert!(matches!(err, KeyError::PrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("-pubout"));
    }

    #[test]
    fn refuses_garbage_and_unsupported_curves() {
        assert!(matches!(
            PublicKey::from_pem("hello").unwrap_err(),
            KeyError::NotPem { .. }
        ));
        let mut scalar = [7u8; 66];
        scalar[0] = 0; // below the group order, whose top byte is 0x01
        let key = p521::SecretKey::from_slice(&scalar).unwrap();
        let pem = key.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let err = PublicKey::from_pem(&pem).unwrap_err();
        assert!(matches!(err, KeyError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("1.3.132.0.35"), "{err}");
    }

    /// An Ed25519 SPKI with `params` (DER) as algorithm parameters.
    pub(crate) fn ed25519_spki_with_params(seed: u8, params: &[u8]) -> Vec<u8> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let algorithm = [&[0x06, 0x03, 0x2b, 0x65, 0x70][..], params].concat();
        let bits = [&[0x03, 0x21, 0x00][..], key.verifying_key().as_bytes()].concat();
        let inner = [&[0x30, u8::try_from(algorithm.len()).unwrap()][..], &algorithm, &bits].concat();
        [&[0x30, u8::try_from(inner.len()).unwrap()][..], &inner].concat()
    }

    /// A P-256 SPKI carrying the point in compressed form.
    pub(crate) fn p256_spki_compressed(seed: u8) -> Vec<u8> {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let key = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let point = key.public_key().to_encoded_point(true);
        let algorithm = [
            &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01][..],
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        ]
        .concat();
        let bits = [&[0x03, 0x22, 0x00][..], point.as_bytes()].concat();
        let inner = [&[0x30, u8::try_from(algorithm.len()).unwrap()][..], &algorithm, &bits].concat();
        [&[0x30, u8::try_from(inner.len()).unwrap()][..], &inner].concat()
    }

    fn pem_of(der: &[u8]) -> String {
        pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, der).unwrap()
    }

    #[test]
    fn ed25519_keys_with_algorithm_parameters_are_malformed() {
        // The same key with NULL or INTEGER parameters must not pass as another key.
        for params in [&[0x05, 0x00][..], &[0x02, 0x01, 0x00]] {
            let err = PublicKey::from_pem(&pem_of(&ed25519_spki_with_params(1, params))).unwrap_err();
            assert!(
                matches!(
                    err,
                    KeyError::Malformed {
                        algorithm: "ed25519",
                        ..
                    }
                ) && err.to_string().contains("RFC 8410"),
                "{err}"
            );
        }
        // Without parameters it is the ordinary key.
        assert_eq!(
            PublicKey::from_pem(&pem_of(&ed25519_spki_with_params(1, &[]))).unwrap(),
            PublicKey::from_pem(&ed25519_pem(1)).unwrap()
        );
    }

    #[test]
    fn a_compressed_point_is_the_same_key_as_its_uncompressed_form() {
        let compressed = PublicKey::from_pem(&pem_of(&p256_spki_compressed(5))).unwrap();
        let uncompressed = PublicKey::from_pem(&p256_pem(5)).unwrap();
        assert_eq!(compressed, uncompressed);
        assert_eq!(compressed.spki_der(), uncompressed.spki_der());
    }

    #[test]
    fn refuses_a_point_off_the_curve() {
        let pem = p256_pem(4);
        let (_, mut der) = pem_rfc7468::decode_vec(pem.as_bytes()).unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        let err = PublicKey::from_spki_der(&der).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Malformed {
                    algorithm: "ecdsa-p256",
                    ..
                }
            ),
            "{err}"
        );
    }
}
