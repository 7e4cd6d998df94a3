//! The audit log: one line per enforced governed change, each line the canonical JSON of an
//! [`AuditEntry`] that names the SHA-256 of the line before it, so the log is a hash chain.
//!
//! Each entry carries the approvals that authorised the change and the policy document they
//! were checked against (and, for `policy.update`, the new policy), so [`verify`] can recompute
//! the chain and re-verify every approval offline. Policies chain too: an entry may only rely
//! on the trusted policy (the first entry's, or the one given) or on a policy that an earlier
//! verified `policy.update` entry introduced.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::approval::{evaluate, Approval};
use super::policy::Policy;
use super::Action;
use crate::canonical::{sha256_tagged, to_canonical_json};

/// One enforced change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1 for the first entry, then +1.
    pub sequence: u64,
    /// When the change was enforced (RFC 3339, UTC).
    pub time: String,
    /// The governed action.
    pub action: String,
    /// The resource type.
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: String,
    /// Digest of the governed attributes before the change (null when creating).
    pub from: Option<String>,
    /// Digest of the governed attributes after the change.
    pub to: String,
    /// The change digest the approvals signed: recomputed from the fields above on verify.
    pub change_digest: String,
    /// The digest of the policy whose rule was met.
    pub policy_digest: String,
    /// That policy's document.
    pub policy_document: String,
    /// For `policy.update`: the new policy's document (its own rule was met too when it has one).
    pub new_policy_document: Option<String>,
    /// The approvals that authorised the change.
    pub approvals: Vec<Approval>,
    /// `sha256:` of the previous line; null for the first entry.
    pub previous: Option<String>,
    /// `sha256:` of the canonical JSON of this entry without this field, so a change to the
    /// last entry is caught too (no later entry names its hash).
    pub entry_sha256: String,
}

impl AuditEntry {
    fn self_digest(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("entry_sha256");
        }
        to_canonical_json(&value)
            .map(|text| sha256_tagged(text.as_bytes()))
            .unwrap_or_default()
    }
}

/// Why a log does not verify, naming the first broken entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {line} of the audit log is broken: {reason}")]
pub struct AuditError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// What a verified log showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// How many entries verified.
    pub entries: usize,
    /// The digest of the policy trusted first.
    pub trusted_policy: Option<String>,
    /// `sha256:` of the last line (what the next entry will name).
    pub head: Option<String>,
}

/// Appends `entry` to the log at `path`, filling in its sequence and the previous line's
/// digest. The caller holds the backend's write lock.
///
/// # Errors
/// I/O errors.
pub fn append(path: &Path, mut entry: AuditEntry) -> std::io::Result<AuditEntry> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let last = existing.lines().rfind(|l| !l.trim().is_empty());
    entry.sequence = existing.lines().filter(|l| !l.trim().is_empty()).count() as u64 + 1;
    entry.previous = last.map(|line| sha256_tagged(line.as_bytes()));
    entry.entry_sha256 = entry.self_digest();
    let value = serde_json::to_value(&entry).map_err(std::io::Error::other)?;
    let line = to_canonical_json(&value).map_err(std::io::Error::other)?;
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(format!("{line}\n").as_bytes())?;
    file.sync_all()?;
    Ok(entry)
}

/// Recomputes the chain of `log` and re-verifies every approval. `trusted` pins the first
/// policy; without it, the first entry's policy is trusted as found.
///
/// # Errors
/// The first broken entry.
pub fn verify(log: &str, trusted: Option<&Policy>) -> Result<AuditSummary, AuditError> {
    let mut trusted_digests: BTreeSet<String> = trusted.map(|p| p.digest()).into_iter().collect();
    let mut first_trusted = trusted.map(Policy::digest);
    let mut retired: BTreeSet<String> = BTreeSet::new();
    let mut previous: Option<String> = None;
    let mut count = 0;
    for (index, line) in log.lines().enumerate() {
        let number = index + 1;
        let broken = |reason: String| AuditError { line: number, reason };
        if line.trim().is_empty() {
            return Err(broken("it is empty".into()));
        }
        let entry: AuditEntry =
            serde_json::from_str(line).map_err(|e| broken(format!("it is not an audit entry ({e})")))?;
        let canonical = serde_json::to_value(&entry)
            .ok()
            .and_then(|v| to_canonical_json(&v).ok());
        if canonical.as_deref() != Some(line) {
            return Err(broken(
                "it is not the canonical JSON it was written as (a byte was changed?)".into(),
            ));
        }
        if entry.entry_sha256 != entry.self_digest() {
            return Err(broken(
                "its contents do not hash to its entry_sha256 (it was changed)".into(),
            ));
        }
        if entry.sequence != number as u64 {
            return Err(broken(format!("its sequence is {}, expected {number}", entry.sequence)));
        }
        if entry.previous != previous {
            return Err(broken(format!(
                "it names the previous entry {}, but the previous line hashes to {}",
                entry.previous.as_deref().unwrap_or("(none)"),
                previous.as_deref().unwrap_or("(none)")
            )));
        }
        let policy = Policy::from_document(&entry.policy_document).map_err(|e| broken(format!("its policy: {e}")))?;
        if policy.digest() != entry.policy_digest {
            return Err(broken("its policy document does not hash to its policy_digest".into()));
        }
        if retired.contains(&entry.policy_digest) {
            return Err(broken(format!(
                "it relies on policy {}, which an earlier policy.update replaced or deleted",
                entry.policy_digest
            )));
        }
        if first_trusted.is_none() {
            first_trusted = Some(policy.digest());
            trusted_digests.insert(policy.digest());
        }
        if !trusted_digests.contains(&entry.policy_digest) {
            return Err(broken(format!(
                "it relies on policy {}, which neither the trusted policy nor an approved policy.update introduced",
                entry.policy_digest
            )));
        }
        let action: Action = entry
            .action
            .parse()
            .map_err(|e: super::UnknownAction| broken(e.to_string()))?;
        let recomputed = super::approval::change_digest(
            action,
            &entry.resource_type,
            &entry.policy_digest,
            entry.from.as_deref(),
            &entry.to,
        );
        if recomputed != entry.change_digest {
            return Err(broken(
                "its change digest does not match its action, resource type, policy and transition".into(),
            ));
        }
        let status =
            evaluate(&policy, action, &entry.change_digest, &entry.approvals).map_err(|e| broken(e.to_string()))?;
        if !status.satisfied() {
            return Err(broken(format!(
                "its approvals do not meet the policy: {}",
                status.summary()
            )));
        }
        match (&entry.new_policy_document, action) {
            (Some(_), other) if other != Action::PolicyUpdate => {
                return Err(broken(format!(
                    "it introduces a policy, which only policy.update may, not {other}"
                )));
            }
            (Some(new_document), _) => {
                let new_policy =
                    Policy::from_document(new_document).map_err(|e| broken(format!("its new policy: {e}")))?;
                if new_policy.digest() != entry.to {
                    return Err(broken(
                        "its new policy is not the one the approvals signed for (`to`)".into(),
                    ));
                }
                if new_policy.rule(Action::PolicyUpdate).is_some() {
                    let status = evaluate(
                        &new_policy,
                        Action::PolicyUpdate,
                        &entry.change_digest,
                        &entry.approvals,
                    )
                    .map_err(|e| broken(e.to_string()))?;
                    if !status.satisfied() {
                        return Err(broken(format!(
                            "its approvals do not meet the new policy: {}",
                            status.summary()
                        )));
                    }
                }
                // The new policy replaces the old one: approvals under the old are no longer valid.
                trusted_digests.remove(&entry.policy_digest);
                retired.insert(entry.policy_digest.clone());
                trusted_digests.insert(new_policy.digest());
            }
            (None, Action::PolicyUpdate) => {
                // A policy.update without a new policy is the policy's deletion.
                trusted_digests.remove(&entry.policy_digest);
                retired.insert(entry.policy_digest.clone());
            }
            (None, _) => {}
        }
        previous = Some(sha256_tagged(line.as_bytes()));
        count += 1;
    }
    Ok(AuditSummary {
        entries: count,
        trusted_policy: first_trusted,
        head: previous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::govern::approval::{approve, change_digest};
    use crate::govern::keys::tests::ed25519_pem;
    use crate::govern::policy::{PolicySpec, RuleSpec, SignerSpec};
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    fn policy() -> (Policy, String) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let spec = PolicySpec {
            name: "gov".into(),
            signers: vec![SignerSpec {
                id: "a".into(),
                role: "auditor".into(),
                public_key_pem: Some(ed25519_pem(9)),
                kms_key_id: None,
            }],
            rules: vec![RuleSpec {
                action: "image.publish".into(),
                threshold: 1,
                roles: vec!["auditor".into()],
            }],
            expires_at: None,
        };
        let policy = Policy::from_spec(&spec, 1, &|_| Err(String::new())).unwrap();
        (policy, key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string())
    }

    fn entry(policy: &Policy, key: &str, n: u8) -> AuditEntry {
        let to = format!("sha256:{n:064}");
        let digest = change_digest(Action::ImagePublish, "safebox_image", &policy.digest(), None, &to);
        AuditEntry {
            sequence: 0,
            time: "2026-11-27T12:00:00Z".into(),
            action: "image.publish".into(),
            resource_type: "safebox_image".into(),
            resource_id: format!("img-{n}"),
            from: None,
            to,
            change_digest: digest.clone(),
            policy_digest: policy.digest(),
            policy_document: policy.document(),
            new_policy_document: None,
            approvals: vec![approve(key, "a", Action::ImagePublish, &digest).unwrap()],
            previous: None,
            entry_sha256: String::new(),
        }
    }

    #[test]
    fn appended_entries_chain_and_verify_and_any_changed_byte_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (policy, key) = policy();
        for n in 1..=3 {
            let written = append(&path, entry(&policy, &key, n)).unwrap();
            assert_eq!(written.sequence, u64::from(n));
        }
        let log = std::fs::read_to_string(&path).unwrap();
        let summary = verify(&log, Some(&policy)).unwrap();
        assert_eq!(summary.entries, 3);

        // Single-byte changes all over the log are detected and name an entry.
        let bytes = log.as_bytes();
        for at in (0..bytes.len()).step_by(3) {
            let mut changed = bytes.to_vec();
            changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
            let Ok(text) = String::from_utf8(changed) else { continue };
            if text == log {
                continue;
            }
            let err = verify(&text, Some(&policy)).unwrap_err();
            assert!(err.line >= 1 && err.line <= 3, "{err}");
        }
        // Dropping an entry breaks the chain at the entry after it.
        let lines: Vec<&str> = log.lines().collect();
        let dropped = format!("{}\n{}\n", lines[0], lines[2]);
        assert_eq!(verify(&dropped, Some(&policy)).unwrap_err().line, 2);
    }

    #[test]
    fn only_an_approved_policy_update_may_introduce_a_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (policy, key) = policy();
        append(&path, entry(&policy, &key, 1)).unwrap();
        // Someone with write access replays a valid entry and slips in a policy of their own.
        let attacker = policy.clone().with_version(9);
        let mut forged = entry(&policy, &key, 1);
        forged.new_policy_document = Some(attacker.document());
        append(&path, forged).unwrap();
        let err = verify(&std::fs::read_to_string(&path).unwrap(), Some(&policy)).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("only policy.update may"), "{err}");
    }

    #[test]
    fn an_untrusted_policy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (policy, key) = policy();
        append(&path, entry(&policy, &key, 1)).unwrap();
        let other = policy.clone().with_version(7);
        let err = verify(&std::fs::read_to_string(&path).unwrap(), Some(&other)).unwrap_err();
        assert!(err.reason.contains("neither the trusted policy"), "{err}");
    }
}
