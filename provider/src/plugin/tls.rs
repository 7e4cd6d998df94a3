//! AutoMTLS as go-plugin does it, with real client authentication.
//!
//! The plugin makes a fresh self-signed server certificate per start and tells Terraform in
//! the handshake line; Terraform passes its own freshly made client certificate in
//! `PLUGIN_CLIENT_CERT`. The server requires that exact certificate, byte for byte, and checks
//! the TLS handshake signature against its key. Terraform's certificate is ECDSA P-521 and
//! marked as a CA, which general-purpose WebPKI verifiers refuse as a client certificate, so
//! this verifier pins it instead of validating it as a chain; pinning is the stronger check.

use std::sync::Arc;

use p256::ecdsa::signature::Verifier as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};
use spki::der::Decode as _;
use spki::ObjectIdentifier;

/// How long the per-start server certificate is valid; a provider process lives minutes.
const SERVER_CERT_LIFETIME: time::Duration = time::Duration::days(30);
/// Back-dating of the server certificate, for clocks slightly apart.
const SERVER_CERT_BACKDATE: time::Duration = time::Duration::minutes(5);

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

/// The server's per-start certificate and key.
pub struct ServerIdentity {
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    key_der: PrivatePkcs8KeyDer<'static>,
}

/// Makes a self-signed ECDSA P-256 certificate for `localhost` (the name Terraform's plugin
/// client verifies), marked as a CA because Terraform trusts it as its own root.
///
/// # Errors
/// A message when key generation fails.
pub fn generate_server_identity() -> Result<ServerIdentity, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "terraform-provider-safebox");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - SERVER_CERT_BACKDATE;
    params.not_after = now + SERVER_CERT_LIFETIME;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand_serial()));
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(ServerIdentity {
        cert_der: cert.der().clone(),
        key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
    })
}

/// A random positive 128-bit serial number.
fn rand_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial
}

enum PinnedKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
}

/// Accepts exactly one client certificate: the one Terraform announced.
pub struct PinnedClientCert {
    der: Vec<u8>,
    key: PinnedKey,
}

impl std::fmt::Debug for PinnedClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedClientCert")
            .field("der_len", &self.der.len())
            .finish_non_exhaustive()
    }
}

impl PinnedClientCert {
    /// Pins the PEM certificate from `PLUGIN_CLIENT_CERT`.
    ///
    /// # Errors
    /// A message when it is not an ECDSA certificate on P-256, P-384 or P-521.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
            .map_err(|e| format!("PLUGIN_CLIENT_CERT is not PEM: {e}"))?;
        if label != "CERTIFICATE" {
            return Err(format!("PLUGIN_CLIENT_CERT holds a {label:?}, not a CERTIFICATE"));
        }
        Self::from_der(der)
    }

    /// Pins a DER certificate.
    ///
    /// # Errors
    /// A message when it is not an ECDSA certificate on P-256, P-384 or P-521.
    pub fn from_der(der: Vec<u8>) -> Result<Self, String> {
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| format!("the client certificate does not parse: {e}"))?;
        let spki = &cert.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
            return Err(format!(
                "the client certificate's key is {}, not ECDSA",
                spki.algorithm.oid
            ));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or("the client certificate's key names no curve")?;
        let point = spki.subject_public_key.raw_bytes();
        let bad_point = |_| "the client certificate's public key is not a valid point".to_owned();
        let key = match curve {
            OID_P256 => PinnedKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad_point)?),
            OID_P384 => PinnedKey::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad_point)?),
            OID_P521 => PinnedKey::P521(p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad_point)?),
            other => {
                return Err(format!(
                    "the client certificate uses curve {other}, not P-256, P-384 or P-521"
                ))
            }
        };
        Ok(Self { der, key })
    }

    /// Verifies `signature` (DER ECDSA) over `message` under the pinned key with `scheme`,
    /// which must match the key's curve.
    fn verify(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
        signature: &[u8],
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let invalid = || TlsError::InvalidCertificate(CertificateError::BadSignature);
        let ok = match (&self.key, scheme) {
            (PinnedKey::P256(key), SignatureScheme::ECDSA_NISTP256_SHA256) => {
                p256::ecdsa::DerSignature::from_bytes(signature)
                    .ok()
                    .is_some_and(|sig| key.verify(message, &sig).is_ok())
            }
            (PinnedKey::P384(key), SignatureScheme::ECDSA_NISTP384_SHA384) => {
                p384::ecdsa::DerSignature::from_bytes(signature)
                    .ok()
                    .is_some_and(|sig| key.verify(message, &sig).is_ok())
            }
            (PinnedKey::P521(key), SignatureScheme::ECDSA_NISTP521_SHA512) => {
                p521::ecdsa::Signature::from_der(signature)
                    .ok()
                    .is_some_and(|sig| key.verify(message, &sig).is_ok())
            }
            _ => {
                return Err(TlsError::PeerMisbehaved(
                    rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
                ))
            }
        };
        if ok {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(invalid())
        }
    }

    fn scheme(&self) -> SignatureScheme {
        match self.key {
            PinnedKey::P256(_) => SignatureScheme::ECDSA_NISTP256_SHA256,
            PinnedKey::P384(_) => SignatureScheme::ECDSA_NISTP384_SHA384,
            PinnedKey::P521(_) => SignatureScheme::ECDSA_NISTP521_SHA512,
        }
    }

    fn is_pinned(&self, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
        if cert.as_ref() == self.der.as_slice() {
            Ok(())
        } else {
            Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ClientCertVerifier for PinnedClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.is_pinned(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.is_pinned(cert)?;
        self.verify(dss.scheme, message, dss.signature())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.is_pinned(cert)?;
        self.verify(dss.scheme, message, dss.signature())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![self.scheme()]
    }
}

/// The TLS server configuration: TLS 1.2 or 1.3, ALPN `h2`, the pinned client certificate
/// required.
///
/// # Errors
/// A message when rustls rejects the identity.
pub fn server_config(identity: &ServerIdentity, client: PinnedClientCert) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(client))
        .with_single_cert(
            vec![identity.cert_der.clone()],
            PrivateKeyDer::Pkcs8(identity.key_der.clone_key()),
        )
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
