//! Attested links: two boxes that have each verified the other's attestation document derive
//! a shared key that exists only inside them.
//!
//! The key is HKDF-SHA256 over the ECDH (P-384) of the two agents' per-boot keys (the
//! `public_key` bound into each document), salted with the SHA-256 of the canonical JSON of
//! both documents' digests and keyed to the link id, so it is tied to exactly the two
//! documents that were verified. [`binding_sha256`] is what both sides and the provider agree
//! on: the canonical JSON of both document digests and both public keys.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::canonical::to_canonical_json;

/// The two sides of a link, as the documents each verified describe them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSides {
    /// SHA-256 (hex) of side A's attestation document.
    pub a_document_sha256: String,
    /// SHA-256 (hex) of side B's attestation document.
    pub b_document_sha256: String,
    /// Side A's per-boot public key (hex, uncompressed SEC1).
    pub a_public_key: String,
    /// Side B's per-boot public key.
    pub b_public_key: String,
}

impl LinkSides {
    /// The link's binding: SHA-256 (hex) of the canonical JSON of both digests and both keys.
    #[must_use]
    pub fn binding_sha256(&self) -> String {
        let value = json!({
            "a_document_sha256": self.a_document_sha256,
            "b_document_sha256": self.b_document_sha256,
            "a_public_key": self.a_public_key,
            "b_public_key": self.b_public_key,
        });
        hex::encode(Sha256::digest(to_canonical_json(&value).unwrap_or_default().as_bytes()))
    }

    fn salt(&self) -> [u8; 32] {
        let value = json!({"a_document_sha256": self.a_document_sha256, "b_document_sha256": self.b_document_sha256});
        Sha256::digest(to_canonical_json(&value).unwrap_or_default().as_bytes()).into()
    }
}

/// Why a link key could not be made or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer's public key is not a P-384 point.
    #[error("the peer's public key is not a P-384 point")]
    PeerKey,
    /// Sealing or opening failed (wrong key, or a changed message).
    #[error("the message does not open with this link's key")]
    Open,
}

/// A link's symmetric key (AES-256-GCM). It never leaves the box that derived it.
pub struct LinkKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

struct Len32;

impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl LinkKey {
    /// Derives the key from `own` secret and the peer's public key (uncompressed SEC1).
    ///
    /// # Errors
    /// [`LinkError::PeerKey`] when the peer key is not a valid point.
    pub fn derive(
        own: &p384::SecretKey,
        peer_public: &[u8],
        sides: &LinkSides,
        link_id: &str,
    ) -> Result<Self, LinkError> {
        let peer = p384::PublicKey::from_sec1_bytes(peer_public).map_err(|_| LinkError::PeerKey)?;
        let shared = p384::ecdh::diffie_hellman(own.to_nonzero_scalar(), peer.as_affine());
        let info = format!("safebox-link:v1:{link_id}");
        let info_parts = [info.as_bytes()];
        let prk = Salt::new(HKDF_SHA256, &sides.salt()).extract(shared.raw_secret_bytes());
        let okm = prk.expand(&info_parts, Len32).map_err(|_| LinkError::PeerKey)?;
        let mut bytes = [0u8; 32];
        okm.fill(&mut bytes).map_err(|_| LinkError::PeerKey)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| LinkError::PeerKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals `plaintext`: a fresh 12-byte nonce, then the ciphertext and tag.
    #[must_use]
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut in_out = plaintext.to_vec();
        // Sealing with a valid key and nonce cannot fail.
        let _ = self
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::empty(), &mut in_out);
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&in_out);
        out
    }

    /// Opens what [`Self::seal`] sealed.
    ///
    /// # Errors
    /// [`LinkError::Open`] for a wrong key or a changed message.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, LinkError> {
        if sealed.len() < NONCE_LEN {
            return Err(LinkError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| LinkError::Open)?;
        let mut in_out = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut in_out)
            .map_err(|_| LinkError::Open)?;
        Ok(plain.to_vec())
    }
}

/// Tries `candidate` (32 bytes) as a raw AES-256-GCM key on `sealed`; for tests that show a
/// key is nowhere it should not be.
#[must_use]
pub fn opens_with_raw_key(candidate: &[u8], sealed: &[u8]) -> bool {
    let Ok(key) = UnboundKey::new(&AES_256_GCM, candidate) else {
        return false;
    };
    let key = LinkKey {
        key: LessSafeKey::new(key),
    };
    key.open(sealed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::elliptic_curve::sec1::ToEncodedPoint as _;

    fn public(key: &p384::SecretKey) -> Vec<u8> {
        key.public_key().to_encoded_point(false).as_bytes().to_vec()
    }

    #[test]
    fn both_sides_derive_the_same_key_and_no_one_else_does() {
        let (a, b, eve) = (
            p384::SecretKey::random(&mut rand::rngs::OsRng),
            p384::SecretKey::random(&mut rand::rngs::OsRng),
            p384::SecretKey::random(&mut rand::rngs::OsRng),
        );
        let sides = LinkSides {
            a_document_sha256: "aa".repeat(32),
            b_document_sha256: "bb".repeat(32),
            a_public_key: hex::encode(public(&a)),
            b_public_key: hex::encode(public(&b)),
        };
        let key_a = LinkKey::derive(&a, &public(&b), &sides, "lnk-1").unwrap();
        let key_b = LinkKey::derive(&b, &public(&a), &sides, "lnk-1").unwrap();
        let sealed = key_a.seal(b"patient records");
        assert_eq!(key_b.open(&sealed).unwrap(), b"patient records");
        let eve_key = LinkKey::derive(&eve, &public(&a), &sides, "lnk-1").unwrap();
        assert_eq!(eve_key.open(&sealed), Err(LinkError::Open));
        // Another link id, or other documents, give another key.
        assert!(LinkKey::derive(&b, &public(&a), &sides, "lnk-2")
            .unwrap()
            .open(&sealed)
            .is_err());
        let other = LinkSides {
            b_document_sha256: "cc".repeat(32),
            ..sides.clone()
        };
        assert!(LinkKey::derive(&b, &public(&a), &other, "lnk-1")
            .unwrap()
            .open(&sealed)
            .is_err());
        let mut changed = sealed.clone();
        changed[20] ^= 1;
        assert!(key_b.open(&changed).is_err());
        assert_eq!(sides.binding_sha256().len(), 64);
    }
}
