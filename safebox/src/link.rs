//! Attested links: two boxes that have each verified the other's attestation document derive
//! a shared key that exists only inside them.
//!
//! [`establish`] runs the protocol as the controller (the provider) drives it: each side's
//! agent fetches the other's document with its own fresh nonce and verifies it against that
//! side's expected PCRs; the controller verifies both documents too; then both agents derive
//! the key and report the binding, which the controller recomputes. Every step names the side
//! at fault. The agents' management calls are signed with each box's key ([`crate::box_key`]),
//! and the key never leaves the agents: the workload uses it through the in-box socket.
//!
//! The key is HKDF-SHA256 over the ECDH (P-384) of the two agents' per-boot keys (the
//! `public_key` bound into each document), salted with the SHA-256 of the canonical JSON of
//! both documents' digests and keyed to the link id, so it is tied to exactly the two
//! documents that were verified. [`binding_sha256`] is what both sides and the provider agree
//! on: the canonical JSON of both document digests and both public keys.

use std::collections::BTreeMap;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::agent_api::{AgentClient, EstablishRequest, PeerRequest, PeerResponse};
use crate::attest::chain::TrustRoot;
use crate::attest::verify::{verify, Policy};
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

/// Why a link key could not be made or used, or a link not established.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer's public key is not a P-384 point.
    #[error("the peer's public key is not a P-384 point")]
    PeerKey,
    /// Sealing or opening failed (wrong key, or a changed message).
    #[error("the message does not open with this link's key")]
    Open,
    /// One side failed a step of the protocol.
    #[error("side {side}: {reason}")]
    Side {
        /// `a` or `b`.
        side: &'static str,
        /// What failed.
        reason: String,
    },
    /// The two sides name each other and cannot be told apart.
    #[error("both sides are the same box; link two different boxes")]
    SameBox,
    /// A box no longer holds the link it made.
    #[error("it {0}")]
    NotHeld(&'static str),
    /// A box's agent did not answer (the client's error, said).
    #[error("{0}")]
    Agent(String),
}

/// One side of a link, as the controller reaches it.
pub struct Side<'a> {
    /// `a` or `b`, for messages.
    pub label: &'static str,
    /// A client for the side's agent, signing with its box key.
    pub agent: &'a AgentClient,
    /// The side's network endpoint, where its peer fetches its document.
    pub endpoint: &'a str,
    /// PCR index to the hex value the side's document must show; never empty.
    pub expected_pcrs: &'a BTreeMap<u32, String>,
}

/// How documents are verified during a link.
pub struct Verification<'a> {
    /// The root every document must chain to.
    pub root: &'a TrustRoot,
    /// How old a document may be.
    pub max_age_ms: u64,
    /// The time to verify at (ms since 1970).
    pub now_ms: u64,
}

fn side_error(side: &Side<'_>, reason: impl Into<String>) -> LinkError {
    LinkError::Side {
        side: side.label,
        reason: reason.into(),
    }
}

/// Verifies, as the controller, the document `seen` that the peer of `side` fetched from
/// `side`; returns its digest and the public key it binds.
fn check_document(side: &Side<'_>, seen: &PeerResponse, how: &Verification<'_>) -> Result<(String, String), LinkError> {
    let document = base64::engine::general_purpose::STANDARD
        .decode(&seen.peer_document)
        .map_err(|e| side_error(side, format!("its document is not base64 ({e})")))?;
    let expected_pcrs = side
        .expected_pcrs
        .iter()
        .map(|(i, v)| {
            hex::decode(v)
                .map(|b| (*i, b))
                .map_err(|_| side_error(side, format!("expected PCR{i} is not hex")))
        })
        .collect::<Result<_, _>>()?;
    let policy = Policy {
        root: how.root,
        at_ms: how.now_ms,
        expected_pcrs,
        nonce: Some(hex::decode(&seen.nonce).map_err(|_| side_error(side, "the nonce is not hex"))?),
        max_age_ms: Some(how.max_age_ms),
        allow_debug: false,
        kind: None,
    };
    let verified = verify(&document, &policy, None).map_err(|e| side_error(side, e.to_string()))?;
    let key = verified
        .document
        .public_key
        .as_deref()
        .map(hex::encode)
        .ok_or_else(|| side_error(side, "its document binds no public key"))?;
    Ok((verified.document_sha256, key))
}

/// Runs the mutual attestation of link `id` between `a` and `b` and has both agents derive the
/// key; returns what both sides verified. On failure nothing is left to drop but what
/// [`drop_link`] removes.
///
/// # Errors
/// A [`LinkError`] naming the side and the step that failed.
pub fn establish(id: &str, a: &Side<'_>, b: &Side<'_>, how: &Verification<'_>) -> Result<LinkSides, LinkError> {
    for side in [a, b] {
        if side.expected_pcrs.is_empty() {
            return Err(side_error(
                side,
                "no PCRs are expected of it, so any box would do; name its expected PCRs",
            ));
        }
    }
    if a.endpoint == b.endpoint {
        return Err(LinkError::SameBox);
    }
    // Each side verifies the other, with its own nonce.
    let peer_check = |verifier: &Side<'_>, peer: &Side<'_>| {
        verifier
            .agent
            .link_peer(
                id,
                &PeerRequest {
                    peer_endpoint: peer.endpoint.to_owned(),
                    expected_pcrs: peer.expected_pcrs.clone(),
                    max_age_ms: how.max_age_ms,
                },
            )
            .map_err(|e| side_error(peer, format!("failed side {}'s check: {e}", verifier.label)))
    };
    let b_seen_by_a = peer_check(a, b)?;
    let a_seen_by_b = peer_check(b, a)?;
    // The controller checks both documents itself, against the same expectations.
    let (b_digest, b_key) = check_document(b, &b_seen_by_a, how)?;
    let (a_digest, a_key) = check_document(a, &a_seen_by_b, how)?;
    let sides = LinkSides {
        a_document_sha256: a_digest,
        b_document_sha256: b_digest,
        a_public_key: a_key,
        b_public_key: b_key,
    };
    let expected = sides.binding_sha256();
    for side in [a, b] {
        let reported = side
            .agent
            .link_establish(
                id,
                &EstablishRequest {
                    side: side.label.to_owned(),
                    a_document_sha256: sides.a_document_sha256.clone(),
                    b_document_sha256: sides.b_document_sha256.clone(),
                },
            )
            .map_err(|e| side_error(side, e.to_string()))?;
        if reported.binding_sha256 != expected {
            return Err(side_error(
                side,
                format!(
                    "it reports binding {}, but the verified documents give {expected}",
                    reported.binding_sha256
                ),
            ));
        }
    }
    Ok(sides)
}

/// Checks that `agent` still holds link `id` with `binding`.
///
/// # Errors
/// [`LinkError::NotHeld`] saying what the agent holds instead, or [`LinkError::Agent`] why it
/// did not answer.
pub fn check_held(agent: &AgentClient, id: &str, binding: &str) -> Result<(), LinkError> {
    match agent.link_status(id).map_err(|e| LinkError::Agent(e.to_string()))? {
        Some(link) if link.binding_sha256 == binding => Ok(()),
        Some(_) => Err(LinkError::NotHeld("holds another binding for this link")),
        None => Err(LinkError::NotHeld("no longer holds this link's key")),
    }
}

/// Has every agent in `agents` drop link `id` (best effort: a stopped box holds nothing).
pub fn drop_link(id: &str, agents: &[&AgentClient]) {
    for agent in agents {
        let _ = agent.link_delete(id);
    }
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

/// The raw AES-256 key of a link: HKDF-SHA256 over the ECDH secret, salted with both
/// documents' digests, keyed to the link id.
fn key_bytes(
    own: &p384::SecretKey,
    peer_public: &[u8],
    sides: &LinkSides,
    link_id: &str,
) -> Result<[u8; 32], LinkError> {
    let peer = p384::PublicKey::from_sec1_bytes(peer_public).map_err(|_| LinkError::PeerKey)?;
    let shared = p384::ecdh::diffie_hellman(own.to_nonzero_scalar(), peer.as_affine());
    let info = format!("safebox-link:v1:{link_id}");
    let info_parts = [info.as_bytes()];
    let prk = Salt::new(HKDF_SHA256, &sides.salt()).extract(shared.raw_secret_bytes());
    let okm = prk.expand(&info_parts, Len32).map_err(|_| LinkError::PeerKey)?;
    let mut bytes = [0u8; 32];
    okm.fill(&mut bytes).map_err(|_| LinkError::PeerKey)?;
    Ok(bytes)
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
        let bytes = key_bytes(own, peer_public, sides, link_id)?;
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

        // The scan that shows no file holds the key can find it: the real key's bytes open
        // what the link sealed, and bytes one bit off do not.
        let mut raw = key_bytes(&a, &public(&b), &sides, "lnk-1").unwrap();
        assert!(opens_with_raw_key(&raw, &sealed));
        raw[0] ^= 1;
        assert!(!opens_with_raw_key(&raw, &sealed));
    }
}
