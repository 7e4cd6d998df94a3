//! Box keys: who may manage a box's agent.
//!
//! Every box gets its own Ed25519 key pair when it is launched. The agent is told the public
//! half at boot (a command-line argument on the local backend, instance user data on EC2) and
//! accepts a management request (link verification, establishment, status, removal) only when
//! it is signed by the private half, which stays with whoever launched the box: in the
//! provider's `state_dir`, one file per box, readable by its owner only. The link keys
//! themselves never travel: a box's workload reaches them only through the agent's in-box Unix
//! socket, never through the network listener.
//!
//! # Signed requests
//! A request carries `Authorization: Safebox v1 ts=<ms>,nonce=<32 hex>,sig=<base64>` where
//! `sig` is the Ed25519 signature of the UTF-8 text
//!
//! ```text
//! safebox-agent-request:v1
//! <the agent's per-boot public key, hex, as its attestation documents bind it>
//! <METHOD>
//! <path and query>
//! <ts>
//! <nonce>
//! <SHA-256 of the body, hex>
//! ```
//!
//! so a signature is good for one request to one agent: another box (another per-boot key),
//! another path, another body or, after [`MAX_SKEW_MS`], another time are all refused, and the
//! agent remembers nonces for that long, so replaying a request verbatim fails too.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

use crate::cloud::{check_record_id, RecordKind};
use crate::private;

/// How far a request's time may be from the agent's clock.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;
/// The request header carrying the signature.
pub const AUTH_HEADER: &str = "authorization";
/// The folder of box keys inside a `state_dir`.
pub const BOX_KEYS: &str = "box-keys";

/// Why a box key could not be kept or used.
#[derive(Debug, thiserror::Error)]
pub enum BoxKeyError {
    /// The key folder or file is not private, or could not be read or written.
    #[error("box keys let their holder manage a box's links: {0}")]
    Private(#[from] crate::private::PrivateError),
    /// A key file does not hold a key.
    #[error(
        "{path} does not hold a box key ({reason}); the box it belongs to can no longer be managed: replace the box"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: KeyFormatError,
    },
    /// The box's id cannot name a file.
    #[error("{0}")]
    Id(#[from] crate::cloud::CloudError),
}

/// Why text is not a box key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Not 32 bytes in hex.
    #[error("{what} is not 64 hex digits")]
    NotHex {
        /// Which key ("the box key \"…\"", "the key file").
        what: String,
    },
    /// 32 bytes that are no Ed25519 public key.
    #[error("the box key is not an Ed25519 public key ({0})")]
    NotEd25519(String),
}

/// 32 bytes from 64 hex digits.
fn key_bytes(hex: &str, what: impl FnOnce() -> String) -> Result<[u8; 32], KeyFormatError> {
    hex::decode(hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyFormatError::NotHex { what: what() })
}

/// Why an agent refused a management request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefused {
    /// No or a malformed Authorization header.
    #[error("the request is not signed with the box's key (Authorization: Safebox v1 ts=…,nonce=…,sig=…): {0}")]
    Unsigned(String),
    /// The agent was started without a key to check against.
    #[error("this agent was started without a box key (--box-key), so it accepts no management request")]
    NoKey,
    /// The signature does not verify.
    #[error("the request's signature does not verify with this box's key")]
    BadSignature,
    /// Too old or too far in the future.
    #[error("the request was signed at {ts} ms, more than {MAX_SKEW_MS} ms from this agent's clock ({now} ms)")]
    Stale {
        /// When it was signed.
        ts: u64,
        /// The agent's time.
        now: u64,
    },
    /// The nonce was used before.
    #[error("the request's nonce was used before: a request is accepted once")]
    Replayed,
}

/// One box's management key pair.
#[derive(Clone)]
pub struct BoxKey {
    signing: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BoxKey({})", self.public_hex())
    }
}

impl BoxKey {
    /// A fresh key pair.
    #[must_use]
    pub fn generate() -> Self {
        Self {
            signing: ed25519_dalek::SigningKey::from_bytes(&rand::random()),
        }
    }

    /// The key whose private half is `hex` (64 hex digits, as the key store keeps it).
    ///
    /// # Errors
    /// [`KeyFormatError::NotHex`] when `hex` is not 32 bytes in hex.
    pub fn from_hex(hex: &str) -> Result<Self, KeyFormatError> {
        let bytes = key_bytes(hex, || "the key file".to_owned())?;
        Ok(Self {
            signing: ed25519_dalek::SigningKey::from_bytes(&bytes),
        })
    }

    /// The public half, 64 hex digits, as the agent is given it.
    #[must_use]
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// The `Authorization` header value for one request to the agent whose per-boot public key
    /// is `agent_key_hex`.
    #[must_use]
    pub fn authorize(&self, agent_key_hex: &str, method: &str, path: &str, body: &[u8], now_ms: u64) -> String {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let message = request_message(agent_key_hex, method, path, now_ms, &nonce, body);
        let signature = self.signing.sign(message.as_bytes());
        format!(
            "Safebox v1 ts={now_ms},nonce={nonce},sig={}",
            base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
        )
    }
}

fn request_message(agent_key_hex: &str, method: &str, path: &str, ts: u64, nonce: &str, body: &[u8]) -> String {
    format!(
        "safebox-agent-request:v1\n{}\n{method}\n{path}\n{ts}\n{nonce}\n{}",
        agent_key_hex.to_ascii_lowercase(),
        hex::encode(Sha256::digest(body))
    )
}

/// What an agent checks management requests against: the box key it was started with and the
/// nonces it has seen.
#[derive(Debug, Default)]
pub struct RequestVerifier {
    key: Option<ed25519_dalek::VerifyingKey>,
    seen: BTreeMap<String, u64>,
}

impl RequestVerifier {
    /// A verifier for the box key `public_hex` (64 hex digits); `None` refuses every request.
    ///
    /// # Errors
    /// A [`KeyFormatError`] when the key is not an Ed25519 public key in hex.
    pub fn new(public_hex: Option<&str>) -> Result<Self, KeyFormatError> {
        let key = public_hex
            .map(|hex_key| {
                let bytes = key_bytes(hex_key, || format!("the box key {hex_key:?}"))?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| KeyFormatError::NotEd25519(e.to_string()))
            })
            .transpose()?;
        Ok(Self {
            key,
            seen: BTreeMap::new(),
        })
    }

    /// Checks one request to the agent whose per-boot public key is `agent_key_hex`.
    ///
    /// # Errors
    /// Why the request is refused.
    pub fn check(
        &mut self,
        header: Option<&str>,
        agent_key_hex: &str,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), RequestRefused> {
        let key = self.key.ok_or(RequestRefused::NoKey)?;
        let header = header.ok_or_else(|| RequestRefused::Unsigned("no Authorization header".into()))?;
        let fields = header
            .strip_prefix("Safebox v1 ")
            .ok_or_else(|| RequestRefused::Unsigned("not the Safebox v1 scheme".into()))?;
        let mut ts = None;
        let mut nonce = None;
        let mut sig = None;
        for part in fields.split(',') {
            match part.trim().split_once('=') {
                Some(("ts", v)) => ts = v.parse::<u64>().ok(),
                Some(("nonce", v)) if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    nonce = Some(v.to_ascii_lowercase());
                }
                Some(("sig", v)) => sig = base64::engine::general_purpose::STANDARD.decode(v).ok(),
                _ => return Err(RequestRefused::Unsigned(format!("unexpected field {part:?}"))),
            }
        }
        let (Some(ts), Some(nonce), Some(sig)) = (ts, nonce, sig) else {
            return Err(RequestRefused::Unsigned(
                "ts, nonce (32 hex) and sig (base64) are all needed".into(),
            ));
        };
        let signature = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| RequestRefused::BadSignature)?;
        let message = request_message(agent_key_hex, method, path, ts, &nonce, body);
        key.verify(message.as_bytes(), &signature)
            .map_err(|_| RequestRefused::BadSignature)?;
        if ts.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(RequestRefused::Stale { ts, now: now_ms });
        }
        self.seen.retain(|_, at| at.abs_diff(now_ms) <= MAX_SKEW_MS);
        if self.seen.insert(nonce, ts).is_some() {
            return Err(RequestRefused::Replayed);
        }
        Ok(())
    }
}

/// The box keys of one `state_dir`: `<state_dir>/box-keys/<box id>.key`, the folder mode 0700
/// and each file 0600, owned by this user.
#[derive(Debug, Clone)]
pub struct BoxKeyStore {
    dir: PathBuf,
}

impl BoxKeyStore {
    /// The box keys of `state_dir` (nothing is created until a key is).
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(BOX_KEYS),
        }
    }

    fn path(&self, box_id: &str) -> Result<PathBuf, BoxKeyError> {
        check_record_id(RecordKind::Enclave, box_id)?;
        Ok(self.dir.join(format!("{box_id}.key")))
    }

    /// Makes and keeps a new key for the box `box_id`.
    ///
    /// # Errors
    /// A [`BoxKeyError`].
    pub fn create(&self, box_id: &str) -> Result<BoxKey, BoxKeyError> {
        let path = self.path(box_id)?;
        private::create_dir(&self.dir)?;
        let key = BoxKey::generate();
        private::write_file(&path, hex::encode(key.signing.to_bytes()).as_bytes())?;
        Ok(key)
    }

    /// The key of the box `box_id`, if one is kept.
    ///
    /// # Errors
    /// A [`BoxKeyError`]: the file is not private, unreadable or damaged.
    pub fn load(&self, box_id: &str) -> Result<Option<BoxKey>, BoxKeyError> {
        let path = self.path(box_id)?;
        let Some(text) = private::read_file(&path)? else {
            return Ok(None);
        };
        BoxKey::from_hex(&String::from_utf8_lossy(&text))
            .map(Some)
            .map_err(|reason| BoxKeyError::Damaged { path, reason })
    }

    /// Forgets the key of the box `box_id` (the folder goes with the last key).
    ///
    /// # Errors
    /// A [`BoxKeyError`] other than "no such key".
    pub fn remove(&self, box_id: &str) -> Result<(), BoxKeyError> {
        let path = self.path(box_id)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BoxKeyError::Private(crate::private::PrivateError::Io {
                    action: "removing",
                    path,
                    source,
                }))
            }
        }
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "04aa";

    #[test]
    fn a_signed_request_is_accepted_once_and_only_as_signed() {
        let key = BoxKey::generate();
        let mut verifier = RequestVerifier::new(Some(&key.public_hex())).unwrap();
        let now = 1_800_000_000_000;
        let header = key.authorize(AGENT, "POST", "/links/l1/peer", b"{}", now);
        verifier
            .check(Some(&header), AGENT, "POST", "/links/l1/peer", b"{}", now + 10)
            .unwrap();
        // The same request again is a replay.
        assert_eq!(
            verifier.check(Some(&header), AGENT, "POST", "/links/l1/peer", b"{}", now + 20),
            Err(RequestRefused::Replayed)
        );
        // Another agent, path, method or body does not verify.
        for (agent, method, path, body) in [
            ("04bb", "POST", "/links/l1/peer", &b"{}"[..]),
            (AGENT, "DELETE", "/links/l1/peer", b"{}"),
            (AGENT, "POST", "/links/l2/peer", b"{}"),
            (AGENT, "POST", "/links/l1/peer", b"{\"x\":1}"),
        ] {
            let fresh = key.authorize(AGENT, "POST", "/links/l1/peer", b"{}", now);
            assert_eq!(
                verifier.check(Some(&fresh), agent, method, path, body, now),
                Err(RequestRefused::BadSignature),
                "{agent} {method} {path}"
            );
        }
        // Too old.
        let old = key.authorize(AGENT, "GET", "/links/l1", b"", now - MAX_SKEW_MS - 1);
        assert!(matches!(
            verifier.check(Some(&old), AGENT, "GET", "/links/l1", b"", now),
            Err(RequestRefused::Stale { .. })
        ));
        // Another key, no header, another scheme, no key at all.
        let other = BoxKey::generate().authorize(AGENT, "GET", "/links/l1", b"", now);
        assert_eq!(
            verifier.check(Some(&other), AGENT, "GET", "/links/l1", b"", now),
            Err(RequestRefused::BadSignature)
        );
        assert!(matches!(
            verifier.check(None, AGENT, "GET", "/links/l1", b"", now),
            Err(RequestRefused::Unsigned(_))
        ));
        assert!(matches!(
            verifier.check(Some("Bearer x"), AGENT, "GET", "/links/l1", b"", now),
            Err(RequestRefused::Unsigned(_))
        ));
        let mut keyless = RequestVerifier::new(None).unwrap();
        assert_eq!(
            keyless.check(Some(&header), AGENT, "POST", "/links/l1/peer", b"{}", now),
            Err(RequestRefused::NoKey)
        );
    }

    #[test]
    fn keys_are_kept_privately_and_refused_when_not_private() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let store = BoxKeyStore::new(dir.path());
        let key = store.create("box-1").unwrap();
        let loaded = store.load("box-1").unwrap().unwrap();
        assert_eq!(loaded.public_hex(), key.public_hex());
        let file = dir.path().join(BOX_KEYS).join("box-1.key");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.path().join(BOX_KEYS)).unwrap().mode() & 0o777, 0o700);
        // A key file others could read is refused, naming the fix.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.load("box-1").unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(dir.path().join(BOX_KEYS), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(store.load("box-1").unwrap_err().to_string().contains("chmod 700"));
        fs::set_permissions(dir.path().join(BOX_KEYS), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(store.load("../x").is_err());
        assert!(store.load("box-2").unwrap().is_none());
        store.remove("box-1").unwrap();
        store.remove("box-1").unwrap();
        assert!(!dir.path().join(BOX_KEYS).exists(), "the folder goes with the last key");
    }
}
