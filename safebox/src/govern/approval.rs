//! Approvals: signatures by policy signers over one governed change.
//!
//! The signed message is the UTF-8 string `safebox-approval:v1:<action>:<change_digest>`.
//! Ed25519 signs it directly; ECDSA P-256 and P-384 sign its SHA-256 and SHA-384 and give DER
//! signatures, so auditors can sign with `openssl`, a hardware token or a KMS key. An approval
//! is the JSON object `{"signer", "action", "digest", "signature"}` (signature in base64).
//!
//! [`evaluate`] counts approvals against a policy rule the way TUF counts signatures: only
//! valid signatures, over this exact action and digest, by signers whose role the rule names,
//! each signer once however many signatures it gives.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::keys::{KeyAlgorithm, PublicKey};
use super::policy::Policy;
use super::Action;

/// One signer's approval of one change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The signer's id in the policy.
    pub signer: String,
    /// The governed action.
    pub action: String,
    /// The change digest, `sha256:<hex>`.
    pub digest: String,
    /// The signature, base64.
    pub signature: String,
}

/// The message an approval signs.
#[must_use]
pub fn approval_message(action: Action, digest: &str) -> String {
    format!("safebox-approval:v1:{}:{digest}", action.as_str())
}

/// Whether `signature` (raw bytes) is `key`'s signature of `message`.
#[must_use]
pub fn signature_valid(key: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ED25519};
    let Some(point) = spki_point(key.spki_der()) else {
        return false;
    };
    let algorithm: &dyn ring::signature::VerificationAlgorithm = match key.algorithm() {
        KeyAlgorithm::Ed25519 => &ED25519,
        KeyAlgorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
        KeyAlgorithm::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
    };
    UnparsedPublicKey::new(algorithm, point)
        .verify(message, signature)
        .is_ok()
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo.
fn spki_point(der: &[u8]) -> Option<Vec<u8>> {
    use spki::der::Decode as _;
    spki::SubjectPublicKeyInfoRef::from_der(der)
        .ok()
        .map(|spki| spki.subject_public_key.raw_bytes().to_vec())
}

/// Why a PEM private key cannot sign an approval.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    /// Not PEM at all.
    #[error("not a PEM private key ({0})")]
    NotPem(String),
    /// PEM of another kind (a public key, a certificate).
    #[error("the PEM holds a {0:?}; give a PRIVATE KEY (PKCS#8) or an EC PRIVATE KEY")]
    NotPrivateKey(String),
    /// A SEC1 key on a curve approvals do not use.
    #[error("the EC private key is not on P-256 or P-384")]
    Curve,
    /// A PKCS#8 key of an algorithm approvals do not use.
    #[error("the private key is not ed25519, ECDSA P-256 or ECDSA P-384")]
    Algorithm,
    /// The key was read but signing or re-encoding it failed.
    #[error("the key could not sign ({0})")]
    Signing(String),
}

/// Signs `message` with a PEM private key (PKCS#8, or SEC1 `EC PRIVATE KEY`).
///
/// # Errors
/// [`SigningKeyError`] when the key cannot be read or is of an unsupported type.
pub fn sign_with_pem(pem: &str, message: &[u8]) -> Result<Vec<u8>, SigningKeyError> {
    use ring::signature::{
        EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
    };
    let (label, der) =
        pem_rfc7468::decode_vec(pem.trim().as_bytes()).map_err(|e| SigningKeyError::NotPem(e.to_string()))?;
    let signing = |e: &dyn std::fmt::Display| SigningKeyError::Signing(e.to_string());
    let pkcs8 = match label {
        "PRIVATE KEY" => der,
        "EC PRIVATE KEY" => {
            use p256::pkcs8::EncodePrivateKey as _;
            // SEC1: try both curves, re-wrapped as PKCS#8 for the signer.
            if let Ok(key) = p256::SecretKey::from_sec1_der(&der) {
                key.to_pkcs8_der().map_err(|e| signing(&e))?.as_bytes().to_vec()
            } else if let Ok(key) = p384::SecretKey::from_sec1_der(&der) {
                key.to_pkcs8_der().map_err(|e| signing(&e))?.as_bytes().to_vec()
            } else {
                return Err(SigningKeyError::Curve);
            }
        }
        other => return Err(SigningKeyError::NotPrivateKey(other.to_owned())),
    };
    let rng = ring::rand::SystemRandom::new();
    if let Ok(key) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8) {
        return Ok(key.sign(message).as_ref().to_vec());
    }
    for algorithm in [&ECDSA_P256_SHA256_ASN1_SIGNING, &ECDSA_P384_SHA384_ASN1_SIGNING] {
        if let Ok(key) = EcdsaKeyPair::from_pkcs8(algorithm, &pkcs8, &rng) {
            return key
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| signing(&e));
        }
    }
    Err(SigningKeyError::Algorithm)
}

/// Signs an approval of `action` on `digest` as `signer` with a PEM private key.
///
/// # Errors
/// As [`sign_with_pem`].
pub fn approve(pem: &str, signer: &str, action: Action, digest: &str) -> Result<Approval, SigningKeyError> {
    let signature = sign_with_pem(pem, approval_message(action, digest).as_bytes())?;
    Ok(signed_approval(signer, action, digest, &signature))
}

/// The approval carrying `signature` of [`approval_message`]`(action, digest)`, made elsewhere
/// (a KMS key, a hardware token).
#[must_use]
pub fn signed_approval(signer: &str, action: Action, digest: &str, signature: &[u8]) -> Approval {
    Approval {
        signer: signer.to_owned(),
        action: action.as_str().to_owned(),
        digest: digest.to_owned(),
        signature: base64::engine::general_purpose::STANDARD.encode(signature),
    }
}

/// Why an approvals file or object was passed over (one reason, shown after its name).
#[derive(Debug, thiserror::Error)]
pub enum NotApprovals {
    /// It could not be opened.
    #[error("cannot be opened ({0})")]
    Open(std::io::Error),
    /// It could not be read.
    #[error("cannot be read ({0})")]
    Read(std::io::Error),
    /// A folder, FIFO, socket or device.
    #[error("is not a regular file")]
    NotFile,
    /// Over [`MAX_APPROVALS_FILE`].
    #[error("is larger than {MAX_APPROVALS_FILE} bytes")]
    TooLarge,
    /// Not UTF-8.
    #[error("is not UTF-8 text")]
    NotText,
    /// Not JSON.
    #[error("not JSON ({0})")]
    NotJson(serde_json::Error),
    /// JSON, but not approvals.
    #[error("not an approval object with signer, action, digest and signature ({0})")]
    NotApproval(serde_json::Error),
}

/// Reads approvals from JSON text: one object, or an array of them.
///
/// # Errors
/// [`NotApprovals`] when the JSON is not approvals.
pub fn parse_approvals(text: &str) -> Result<Vec<Approval>, NotApprovals> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(NotApprovals::NotJson)?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        single => vec![single],
    };
    items
        .into_iter()
        .map(|item| serde_json::from_value(item).map_err(NotApprovals::NotApproval))
        .collect()
}

/// The largest approvals file read; an approval is a few hundred bytes.
pub const MAX_APPROVALS_FILE: u64 = 64 * 1024;

/// What a folder of approvals held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalsFolder {
    /// The approvals of every readable `*.json` file, in file name order.
    pub approvals: Vec<Approval>,
    /// One sentence per entry that was passed over (not a regular file, too large, unreadable,
    /// not approvals), naming it. Skipping can only leave an approval uncounted, never count
    /// one, so a stray entry warns instead of blocking every governed change.
    pub skipped: Vec<String>,
    /// Whether the folder exists at all.
    pub exists: bool,
}

/// Reads every `*.json` file in `dir`, sorted by name. Entries that are not regular files
/// (folders, FIFOs, sockets, devices), files over [`MAX_APPROVALS_FILE`], unreadable files and
/// files that are not approvals are skipped with a reason; reading never blocks on a FIFO.
///
/// # Errors
/// [`UnreadableFolder`] when `dir` exists but cannot be listed.
pub fn read_approvals_dir(dir: &std::path::Path) -> Result<ApprovalsFolder, UnreadableFolder> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ApprovalsFolder::default()),
        Err(source) => {
            return Err(UnreadableFolder {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut folder = ApprovalsFolder {
        exists: true,
        ..ApprovalsFolder::default()
    };
    for path in paths {
        match read_approvals_file(&path) {
            Ok(found) => folder.approvals.extend(found),
            Err(reason) => folder.skipped.push(format!("{}: {reason}", path.display())),
        }
    }
    Ok(folder)
}

/// An approvals folder that exists but cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("reading {}: {source}", dir.display())]
pub struct UnreadableFolder {
    /// The folder.
    pub dir: std::path::PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// One approvals file, opened without blocking (a FIFO never stalls the read) and read only
/// if it is a regular file of at most [`MAX_APPROVALS_FILE`] bytes.
fn read_approvals_file(path: &std::path::Path) -> Result<Vec<Approval>, NotApprovals> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(NotApprovals::Open)?;
    // The type is checked on what was opened, so swapping the entry afterwards changes nothing.
    let metadata = file.metadata().map_err(NotApprovals::Read)?;
    if !metadata.is_file() {
        return Err(NotApprovals::NotFile);
    }
    if metadata.len() > MAX_APPROVALS_FILE {
        return Err(NotApprovals::TooLarge);
    }
    let mut bytes = Vec::new();
    file.take(MAX_APPROVALS_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(NotApprovals::Read)?;
    let text = String::from_utf8(bytes).map_err(|_| NotApprovals::NotText)?;
    parse_approvals(&text)
}

/// How a set of approvals stands against one policy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalStatus {
    /// The action.
    pub action: Action,
    /// Signatures needed.
    pub threshold: u32,
    /// The roles whose signers count.
    pub roles: Vec<String>,
    /// Signers whose valid approval counted, in order.
    pub counted: Vec<String>,
    /// Eligible signers who have not approved.
    pub missing: Vec<String>,
    /// Approvals for this change that did not count, and why (one sentence each).
    pub rejected: Vec<String>,
}

impl ApprovalStatus {
    /// Whether the threshold is met.
    #[must_use]
    pub fn satisfied(&self) -> bool {
        self.counted.len() >= self.threshold as usize
    }

    /// One line, e.g. `1 of 2 for enclave.deploy; missing role auditor: 1 more (auditor-b, auditor-c)`.
    #[must_use]
    pub fn summary(&self) -> String {
        self.line(false)
    }

    /// [`Self::summary`] that also says, while approvals are short, who counted so far
    /// (`; counted: auditor-a` or `; counted: nobody`), as the plan report shows it.
    #[must_use]
    pub fn summary_with_counted(&self) -> String {
        self.line(true)
    }

    fn line(&self, with_counted: bool) -> String {
        let mut text = format!(
            "{} of {} for {}",
            self.counted.len().min(self.threshold as usize),
            self.threshold,
            self.action
        );
        if self.satisfied() {
            text.push_str(&format!("; approved by {}", self.counted.join(", ")));
        } else {
            let short = self.threshold as usize - self.counted.len();
            if with_counted {
                let counted = if self.counted.is_empty() {
                    "nobody".to_owned()
                } else {
                    self.counted.join(", ")
                };
                text.push_str(&format!("; counted: {counted}"));
            }
            text.push_str(&format!(
                "; missing role {}: {short} more ({})",
                self.roles.join(" or "),
                if self.missing.is_empty() {
                    "no eligible signer left".to_owned()
                } else {
                    self.missing.join(", ")
                }
            ));
        }
        if !self.rejected.is_empty() {
            text.push_str(&format!("; not counted: {}", self.rejected.join("; ")));
        }
        text
    }
}

/// Why approvals cannot even be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovernanceError {
    /// The policy has no rule for the action: fail closed.
    #[error("policy {policy:?} has no rule for {action}, so nobody can approve this change; add a rule {{ action = \"{action}\" ... }} to the policy")]
    NoRule {
        /// The policy's name.
        policy: String,
        /// The action.
        action: Action,
    },
}

/// Counts `approvals` of `action` on `digest` against `policy`'s rule for the action.
///
/// # Errors
/// [`GovernanceError::NoRule`] when the policy has no rule for the action.
pub fn evaluate(
    policy: &Policy,
    action: Action,
    digest: &str,
    approvals: &[Approval],
) -> Result<ApprovalStatus, GovernanceError> {
    let rule = policy.rule(action).ok_or_else(|| GovernanceError::NoRule {
        policy: policy.name().to_owned(),
        action,
    })?;
    let message = approval_message(action, digest);
    let mut counted: Vec<String> = Vec::new();
    let mut rejected = Vec::new();
    for approval in approvals
        .iter()
        .filter(|a| a.action == action.as_str() && a.digest == digest)
    {
        if counted.contains(&approval.signer) {
            continue;
        }
        let Some(signer) = policy.signers().get(&approval.signer) else {
            rejected.push(format!(
                "{:?} is not a signer of policy {:?}",
                approval.signer,
                policy.name()
            ));
            continue;
        };
        if !rule.roles.contains(&signer.role) {
            rejected.push(format!(
                "{} has role {:?}, which the {action} rule does not name",
                signer.id, signer.role
            ));
            continue;
        }
        let valid = base64::engine::general_purpose::STANDARD
            .decode(approval.signature.trim())
            .is_ok_and(|sig| signature_valid(&signer.key, message.as_bytes(), &sig));
        if valid {
            counted.push(signer.id.clone());
        } else {
            rejected.push(format!("the signature of {} does not verify", signer.id));
        }
    }
    rejected.sort();
    rejected.dedup();
    let missing: Vec<String> = policy
        .signers()
        .values()
        .filter(|s| rule.roles.contains(&s.role) && !counted.contains(&s.id))
        .map(|s| s.id.clone())
        .collect();
    Ok(ApprovalStatus {
        action,
        threshold: rule.threshold,
        roles: rule
            .roles
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        counted,
        missing,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::govern::keys::tests::{ed25519_pem, p256_pem, p384_pem};
    use crate::govern::policy::{PolicySpec, RuleSpec, SignerSpec};
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    fn private_keys() -> Vec<(String, String, String)> {
        let ed = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let p256 = p256::SecretKey::from_slice(&[2; 32]).unwrap();
        let p384 = p384::SecretKey::from_slice(&[3; 48]).unwrap();
        vec![
            (
                "auditor-a".into(),
                ed.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                ed25519_pem(1),
            ),
            (
                "auditor-b".into(),
                p256.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                p256_pem(2),
            ),
            (
                "auditor-c".into(),
                p384.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                p384_pem(3),
            ),
        ]
    }

    fn two_of_three() -> Policy {
        let spec = PolicySpec {
            name: "gov".into(),
            signers: private_keys()
                .into_iter()
                .map(|(id, _, public)| SignerSpec {
                    role: if id == "auditor-c" {
                        "security".into()
                    } else {
                        "auditor".into()
                    },
                    id,
                    public_key_pem: Some(public),
                    kms_key_id: None,
                })
                .collect(),
            rules: vec![RuleSpec {
                action: "enclave.deploy".into(),
                threshold: 2,
                roles: vec!["auditor".into()],
            }],
            expires_at: None,
        };
        Policy::from_spec(&spec, 1, &|_| Err(String::new())).unwrap()
    }

    fn sign(id: &str, digest: &str) -> Approval {
        let (_, private, _) = private_keys().into_iter().find(|(i, _, _)| i == id).unwrap();
        approve(&private, id, Action::EnclaveDeploy, digest).unwrap()
    }

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn counts_zero_one_and_two_valid_approvals() {
        let policy = two_of_three();
        let none = evaluate(&policy, Action::EnclaveDeploy, DIGEST, &[]).unwrap();
        assert!(!none.satisfied());
        assert_eq!(
            none.summary(),
            "0 of 2 for enclave.deploy; missing role auditor: 2 more (auditor-a, auditor-b)"
        );
        let one = evaluate(&policy, Action::EnclaveDeploy, DIGEST, &[sign("auditor-a", DIGEST)]).unwrap();
        assert!(!one.satisfied());
        assert_eq!(
            one.summary(),
            "1 of 2 for enclave.deploy; missing role auditor: 1 more (auditor-b)"
        );
        let two = evaluate(
            &policy,
            Action::EnclaveDeploy,
            DIGEST,
            &[sign("auditor-a", DIGEST), sign("auditor-b", DIGEST)],
        )
        .unwrap();
        assert!(two.satisfied(), "{}", two.summary());
    }

    #[test]
    fn a_signer_counts_once_and_wrong_roles_digests_and_actions_do_not_count() {
        let policy = two_of_three();
        let twice = evaluate(
            &policy,
            Action::EnclaveDeploy,
            DIGEST,
            &[sign("auditor-a", DIGEST), sign("auditor-a", DIGEST)],
        )
        .unwrap();
        assert_eq!(twice.counted, ["auditor-a"]);
        let wrong_role = evaluate(
            &policy,
            Action::EnclaveDeploy,
            DIGEST,
            &[sign("auditor-a", DIGEST), sign("auditor-c", DIGEST)],
        )
        .unwrap();
        assert!(!wrong_role.satisfied());
        assert!(
            wrong_role.summary().contains("auditor-c has role \"security\""),
            "{}",
            wrong_role.summary()
        );
        let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let other_digest = evaluate(
            &policy,
            Action::EnclaveDeploy,
            DIGEST,
            &[sign("auditor-a", DIGEST), sign("auditor-b", other)],
        )
        .unwrap();
        assert!(!other_digest.satisfied());
        let mut other_action = sign("auditor-b", DIGEST);
        other_action.action = "link.create".into();
        assert!(!evaluate(
            &policy,
            Action::EnclaveDeploy,
            DIGEST,
            &[sign("auditor-a", DIGEST), other_action]
        )
        .unwrap()
        .satisfied());
        // Re-labelling an approval for another action does not make it valid for this one.
        let relabelled = Approval {
            action: "enclave.deploy".into(),
            ..approve(&private_keys()[1].1, "auditor-b", Action::LinkCreate, DIGEST).unwrap()
        };
        let status = evaluate(
            &policy,
            Action::EnclaveDeploy,
            DIGEST,
            &[sign("auditor-a", DIGEST), relabelled],
        )
        .unwrap();
        assert!(!status.satisfied());
        assert!(status.summary().contains("signature of auditor-b does not verify"));
    }

    #[test]
    fn a_corrupted_signature_is_named_and_a_missing_rule_fails_closed() {
        let policy = two_of_three();
        let mut corrupted = sign("auditor-b", DIGEST);
        corrupted.signature = corrupted.signature.replacen(|c: char| c.is_ascii_alphabetic(), "0", 1);
        let status = evaluate(
            &policy,
            Action::EnclaveDeploy,
            DIGEST,
            &[sign("auditor-a", DIGEST), corrupted],
        )
        .unwrap();
        assert!(!status.satisfied());
        assert_eq!(status.rejected, ["the signature of auditor-b does not verify"]);
        assert!(matches!(
            evaluate(&policy, Action::LinkCreate, DIGEST, &[]),
            Err(GovernanceError::NoRule { .. })
        ));
    }
}
