//! The audit log: one line per recorded change, each line the canonical JSON of an
//! [`AuditEntry`] that names the SHA-256 of the line before it, so the log is a hash chain.
//!
//! Three kinds of entry:
//! - a governed change (`action` is a governed [`Action`]): it carries the approvals that
//!   authorised it and the policy document they were checked against (and, for
//!   `policy.update`, the new policy), so [`verify`] recomputes the change digest and
//!   re-verifies every approval offline;
//! - `policy.create` ([`POLICY_CREATE`]): a policy came into being. Creating a policy is the
//!   trust bootstrap (nothing governs it), and this entry is what later entries trace their
//!   policy back to;
//! - `policy.change` ([`POLICY_CHANGE`]): a policy without a `policy.update` rule was changed
//!   or deleted, which needs no approval (the policy said so); the entry carries the new version;
//! - `resource.delete` ([`RESOURCE_DELETE`]): a governed resource was destroyed.
//!
//! Policies chain: an entry may rely only on a policy that is in force, that is created by a
//! `policy.create` entry or introduced by an approved `policy.update`, and not since replaced
//! or deleted. A change digest is enforced once: a digest that appears twice breaks the log.
//!
//! The log's [`AuditHead`] (sequence and hash of its last line) is what callers anchor
//! elsewhere (Terraform state, an auditor's notes): [`verify`] checks that an expected head is
//! still in the log, and [`append`] refuses to write to a log that no longer holds a head it
//! was told about, so a truncated or rewritten log is found instead of being extended.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::approval::{evaluate, Approval};
use super::change::{change_digest, Change, ChangeFields};
use super::policy::Policy;
use super::Action;
use crate::canonical::{sha256_tagged, to_canonical_json};

/// `action` of an entry recording a policy's creation.
pub const POLICY_CREATE: &str = "policy.create";
/// `action` of an entry recording the change or deletion of a policy that has no
/// `policy.update` rule.
pub const POLICY_CHANGE: &str = "policy.change";
/// `action` of an entry recording the destruction of a governed resource.
pub const RESOURCE_DELETE: &str = "resource.delete";

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1 for the first entry, then +1.
    pub sequence: u64,
    /// When the change was made (RFC 3339, UTC).
    pub time: String,
    /// A governed action, [`POLICY_CREATE`] or [`RESOURCE_DELETE`].
    pub action: String,
    /// The resource type.
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: String,
    /// The instance the change applied to when it existed before (see [`Change::subject`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Digest of the governed attributes before the change (null when creating).
    pub from: Option<String>,
    /// Digest of the governed attributes after the change.
    pub to: String,
    /// How many identical changes were enforced before this one; absent in entries written
    /// before occurrences existed (their digests are of change document version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<u64>,
    /// The change digest the approvals signed: recomputed from the fields above on verify.
    pub change_digest: String,
    /// The digest of the policy whose rule was met (or that was created, or that governed
    /// the deleted resource).
    pub policy_digest: String,
    /// That policy's document.
    pub policy_document: String,
    /// For `policy.update`: the new policy's document (its own rule was met too when it has one).
    pub new_policy_document: Option<String>,
    /// The approvals that authorised the change (none for the log's own records).
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

    /// The change digest of this entry's fields.
    #[must_use]
    pub fn recomputed_digest(&self) -> String {
        change_digest(&ChangeFields {
            action: &self.action,
            resource_type: &self.resource_type,
            policy_digest: &self.policy_digest,
            subject: self.subject.as_deref(),
            from: self.from.as_deref(),
            to: &self.to,
            occurrence: self.occurrence,
        })
    }

    /// Whether this entry enforced `change` under the policy `policy_digest`, whatever its
    /// occurrence.
    fn is_same_change(&self, change: &Change, policy_digest: &str) -> bool {
        self.action == change.action.as_str()
            && self.resource_type == change.resource_type
            && self.policy_digest == policy_digest
            && self.subject == change.subject
            && self.from == change.from
            && self.to == change.to
    }

    /// An unsigned entry of one of the log's own records, with its digest computed from its
    /// fields: [`POLICY_CREATE`] of `policy` (`to` is its digest), [`POLICY_CHANGE`] of
    /// `policy` to `new` (its deletion when `new` is none), or [`RESOURCE_DELETE`] of a
    /// resource `policy` governed (`to` marks the deletion).
    #[must_use]
    pub fn record(
        action: &str,
        resource_type: &str,
        resource_id: &str,
        policy: &Policy,
        new: Option<&Policy>,
        to: String,
    ) -> Self {
        let existed = action != POLICY_CREATE;
        let mut entry = Self {
            sequence: 0,
            time: String::new(),
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_owned(),
            subject: existed.then(|| resource_id.to_owned()),
            from: (action == POLICY_CHANGE).then(|| policy.digest()),
            to,
            occurrence: Some(0),
            change_digest: String::new(),
            policy_digest: policy.digest(),
            policy_document: policy.document(),
            new_policy_document: new.map(Policy::document),
            approvals: Vec::new(),
            previous: None,
            entry_sha256: String::new(),
        };
        entry.change_digest = entry.recomputed_digest();
        entry
    }
}

/// Where a log stood: the sequence number of its last entry and `sha256:` of that line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditHead {
    /// The last entry's sequence number.
    pub sequence: u64,
    /// `sha256:<hex>` of its line.
    pub hash: String,
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sequence, self.hash)
    }
}

/// A head that is not `SEQ:sha256:HEX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an audit log head; expected SEQUENCE:sha256:HEX (or SEQUENCE:HEX), e.g. 7:sha256:3f1a… as `terraform plan` and `safebox audit verify` print it")]
pub struct BadHead(String);

impl FromStr for AuditHead {
    type Err = BadHead;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadHead(s.to_owned());
        let (sequence, hash) = s.split_once(':').ok_or_else(bad)?;
        let sequence: u64 = sequence.parse().map_err(|_| bad())?;
        // `SEQ:sha256:HEX` as plans print it, or `SEQ:HEX`.
        let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
        if sequence == 0 || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self {
            sequence,
            hash: format!("sha256:{}", hex.to_ascii_lowercase()),
        })
    }
}

/// Why a log does not verify, naming the first broken entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// An entry is broken.
    #[error("entry {line} of the audit log is broken: {reason}")]
    Entry {
        /// The 1-based line number (= sequence number).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The log no longer holds a head it held before: it was cut short or rewritten.
    #[error("the audit log was rolled back or rewritten: {reason}. Restore it from a backup; never extend a rolled-back log")]
    RolledBack {
        /// What was expected and what was found.
        reason: String,
    },
    /// A policy given to trust is not one the log put in force.
    #[error("the audit log never puts the policy {digest} in force (no policy.create, approved policy.update or policy.change introduces it)")]
    PolicyAbsent {
        /// The policy's digest.
        digest: String,
    },
}

impl AuditError {
    /// The 1-based number of the broken entry, when one entry is at fault.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Entry { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// What to check a log against, beyond its own chain.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// A policy the auditor trusts: a log without `policy.create` entries (written before
    /// they existed) trusts it instead of its first entry's policy, and any log must put it
    /// in force at some point.
    pub trusted: Option<&'a Policy>,
    /// A head recorded earlier that the log must still hold.
    pub expect_head: Option<&'a AuditHead>,
}

/// A verified log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifiedLog {
    /// The entries, in order.
    pub entries: Vec<AuditEntry>,
    /// The head, none for an empty log.
    pub head: Option<AuditHead>,
    /// `sha256:` of each line, in order (what a head names).
    pub line_hashes: Vec<String>,
    /// Each policy in force, by the policy's resource id, as its digest.
    pub policies: BTreeMap<String, String>,
    /// Policies trusted without a `policy.create` entry (a pinned policy, or the first
    /// entry's policy of a log written before such entries existed).
    pub bootstrapped: BTreeSet<String>,
}

impl VerifiedLog {
    /// The entry that already enforced `digest`, if any: an approval is used once.
    #[must_use]
    pub fn consumed(&self, digest: &str) -> Option<&AuditEntry> {
        self.entries
            .iter()
            .find(|e| e.change_digest == digest && e.action.parse::<Action>().is_ok())
    }

    /// How many times `change` was enforced under `policy_digest`, leaving out the entries
    /// whose sequence is in `excluding` (those this very run wrote: a change planned before
    /// them keeps the occurrence it was planned with).
    #[must_use]
    pub fn occurrences(&self, change: &Change, policy_digest: &str, excluding: &BTreeSet<u64>) -> u64 {
        self.entries
            .iter()
            .filter(|e| !excluding.contains(&e.sequence) && e.is_same_change(change, policy_digest))
            .count() as u64
    }

    /// The digest of the policy `policy_id` in force, if the log put one in force.
    #[must_use]
    pub fn policy_in_force(&self, policy_id: &str) -> Option<&str> {
        self.policies.get(policy_id).map(String::as_str)
    }

    /// Checks that the log still holds `head`: its entry `head.sequence` hashes to `head.hash`.
    ///
    /// # Errors
    /// [`AuditError::RolledBack`] saying what differs.
    pub fn holds(&self, head: &AuditHead) -> Result<(), AuditError> {
        holds(&self.line_hashes, head)
    }
}

fn holds(line_hashes: &[String], head: &AuditHead) -> Result<(), AuditError> {
    let index = usize::try_from(head.sequence).unwrap_or(usize::MAX).saturating_sub(1);
    match line_hashes.get(index) {
        Some(hash) if *hash == head.hash => Ok(()),
        Some(hash) => Err(AuditError::RolledBack {
            reason: format!(
                "its entry {} hashes to {hash}, not {} as recorded before",
                head.sequence, head.hash
            ),
        }),
        None => Err(AuditError::RolledBack {
            reason: format!(
                "it has {} entries, but entry {} ({}) was recorded before",
                line_hashes.len(),
                head.sequence,
                head.hash
            ),
        }),
    }
}

/// Why an entry could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Reading or writing the log failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The log is broken or was rolled back: nothing is appended to it.
    #[error(transparent)]
    Log(#[from] AuditError),
    /// The change digest was enforced already (by another run that got there first): an
    /// approval authorises one change once.
    #[error("change digest {digest} was already enforced by entry {sequence}; an approval authorises one change once")]
    Consumed {
        /// The digest.
        digest: String,
        /// The entry that used it.
        sequence: u64,
    },
}

/// Appends `entry` to the log at `path`, filling in its sequence and the previous line's
/// digest, after checking that the log's chain is whole and that it still holds `floor` (the
/// latest head the caller saw); returns the log's new head. The caller holds the backend's
/// write lock.
///
/// # Errors
/// [`AppendError::Log`] for a broken or rolled-back log, else I/O errors.
pub fn append(path: &Path, entry: AuditEntry, floor: Option<&AuditHead>) -> Result<AuditHead, AppendError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let (line, head) = extend(&existing, entry, floor)?;
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(format!("{line}\n").as_bytes())?;
    file.sync_all()?;
    Ok(head)
}

/// The line that appends `entry` to the log `existing` (its sequence and the previous line's
/// digest filled in) and the head after it, once the log's chain is checked whole, still
/// holding `floor`, and without an entry that enforced the same change digest. Writes nothing:
/// the caller stores the line where the log is, holding what orders its writers.
///
/// # Errors
/// [`AppendError::Log`] for a broken or rolled-back log, [`AppendError::Consumed`] for a
/// digest enforced already.
pub fn extend(
    existing: &str,
    mut entry: AuditEntry,
    floor: Option<&AuditHead>,
) -> Result<(String, AuditHead), AppendError> {
    let lines = parse_chain(existing)?;
    let hashes: Vec<String> = lines.iter().map(|(_, hash)| hash.clone()).collect();
    if let Some(floor) = floor {
        holds(&hashes, floor)?;
    }
    // Checked under the caller's lock, so two runs racing for one approval never both log it.
    if entry.action.parse::<Action>().is_ok() {
        if let Some((used, _)) = lines.iter().find(|(e, _)| e.change_digest == entry.change_digest) {
            return Err(AppendError::Consumed {
                digest: entry.change_digest,
                sequence: used.sequence,
            });
        }
    }
    entry.sequence = hashes.len() as u64 + 1;
    entry.previous = hashes.last().cloned();
    entry.entry_sha256 = entry.self_digest();
    let value = serde_json::to_value(&entry).map_err(std::io::Error::other)?;
    let line = to_canonical_json(&value).map_err(std::io::Error::other)?;
    let head = AuditHead {
        sequence: entry.sequence,
        hash: sha256_tagged(line.as_bytes()),
    };
    Ok((line, head))
}

/// Parses every line and checks the chain (canonical form, entry digests, sequence numbers,
/// previous-line digests); returns each entry with the `sha256:` of its line.
fn parse_chain(log: &str) -> Result<Vec<(AuditEntry, String)>, AuditError> {
    let mut out: Vec<(AuditEntry, String)> = Vec::new();
    for (index, line) in log.lines().enumerate() {
        let number = index + 1;
        let broken = |reason: String| AuditError::Entry { line: number, reason };
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
        let previous = out.last().map(|(_, hash)| hash.clone());
        if entry.previous != previous {
            return Err(broken(format!(
                "it names the previous entry {}, but the previous line hashes to {}",
                entry.previous.as_deref().unwrap_or("(none)"),
                previous.as_deref().unwrap_or("(none)")
            )));
        }
        out.push((entry, sha256_tagged(line.as_bytes())));
    }
    Ok(out)
}

/// What an entry's `action` says it is.
enum Kind {
    Governed(Action),
    PolicyCreate,
    PolicyChange,
    Delete,
}

/// Recomputes the chain of `log`, re-verifies every approval against the policy in force, and
/// checks `options`.
///
/// # Errors
/// The first broken entry, or why the options are not met.
pub fn verify(log: &str, options: &VerifyOptions<'_>) -> Result<VerifiedLog, AuditError> {
    let lines = parse_chain(log)?;
    let mut verified = VerifiedLog {
        line_hashes: lines.iter().map(|(_, hash)| hash.clone()).collect(),
        ..VerifiedLog::default()
    };
    // A log written before policy.create entries existed trusts the given policy, else its
    // first policy as found. A log with them trusts nothing it did not create or introduce.
    let legacy = !lines.iter().any(|(e, _)| e.action == POLICY_CREATE);
    if let (Some(trusted), true) = (options.trusted, legacy) {
        verified.bootstrapped.insert(trusted.digest());
    }
    // Every policy the log put in force at some point.
    let mut ever_in_force: BTreeSet<String> = verified.bootstrapped.clone();
    let mut retired: BTreeSet<String> = BTreeSet::new();
    let mut created: BTreeSet<String> = BTreeSet::new();
    let mut enforced: BTreeMap<String, u64> = BTreeMap::new();
    for (entry, _) in &lines {
        let number = usize::try_from(entry.sequence).unwrap_or(usize::MAX);
        let broken = |reason: String| AuditError::Entry { line: number, reason };
        let kind = match entry.action.as_str() {
            POLICY_CREATE => Kind::PolicyCreate,
            POLICY_CHANGE => Kind::PolicyChange,
            RESOURCE_DELETE => Kind::Delete,
            other => Kind::Governed(other.parse().map_err(|e: super::UnknownAction| broken(e.to_string()))?),
        };
        let policy = Policy::from_document(&entry.policy_document).map_err(|e| broken(format!("its policy: {e}")))?;
        if policy.digest() != entry.policy_digest {
            return Err(broken("its policy document does not hash to its policy_digest".into()));
        }
        if entry.recomputed_digest() != entry.change_digest {
            return Err(broken(
                "its change digest does not match its action, resource, policy and transition".into(),
            ));
        }
        match kind {
            Kind::PolicyCreate => {
                if entry.to != entry.policy_digest || entry.from.is_some() || entry.new_policy_document.is_some() {
                    return Err(broken("it is not a well-formed policy.create record".into()));
                }
                if !created.insert(entry.resource_id.clone()) || verified.policies.contains_key(&entry.resource_id) {
                    return Err(broken(format!("policy {} is created a second time", entry.resource_id)));
                }
                verified
                    .policies
                    .insert(entry.resource_id.clone(), entry.policy_digest.clone());
                ever_in_force.insert(entry.policy_digest.clone());
            }
            Kind::PolicyChange => {
                if entry.resource_type != "safebox_policy" || !entry.approvals.is_empty() {
                    return Err(broken("it is not a well-formed policy.change record".into()));
                }
                if verified.policies.get(&entry.resource_id) != Some(&entry.policy_digest) {
                    return Err(broken(format!(
                        "it changes policy {} from {}, which is not that policy's version in force",
                        entry.resource_id, entry.policy_digest
                    )));
                }
                if policy.rule(Action::PolicyUpdate).is_some() {
                    return Err(broken(format!(
                        "it changes policy {} without approvals, but that policy has a policy.update rule",
                        entry.resource_id
                    )));
                }
                retire(&mut verified, &mut retired, &entry.policy_digest);
                if let Some(document) = &entry.new_policy_document {
                    let new_policy =
                        Policy::from_document(document).map_err(|e| broken(format!("its new policy: {e}")))?;
                    if new_policy.digest() != entry.to {
                        return Err(broken("its new policy does not hash to its `to`".into()));
                    }
                    verified.policies.insert(entry.resource_id.clone(), new_policy.digest());
                    ever_in_force.insert(new_policy.digest());
                }
            }
            Kind::Delete => {
                if !entry.approvals.is_empty() || entry.resource_type == "safebox_policy" {
                    return Err(broken(
                        "it is not a well-formed resource.delete record (policies go by policy.update or policy.change)".into(),
                    ));
                }
            }
            Kind::Governed(action) => {
                let in_force = verified.policies.values().any(|d| *d == entry.policy_digest)
                    || verified.bootstrapped.contains(&entry.policy_digest);
                if !in_force {
                    if retired.contains(&entry.policy_digest) {
                        return Err(broken(format!(
                            "it relies on policy {}, which an earlier policy.update replaced or deleted",
                            entry.policy_digest
                        )));
                    }
                    if legacy && options.trusted.is_none() && verified.bootstrapped.is_empty() {
                        verified.bootstrapped.insert(entry.policy_digest.clone());
                        ever_in_force.insert(entry.policy_digest.clone());
                    } else {
                        return Err(broken(format!(
                            "it relies on policy {}, which neither a policy.create entry, the trusted policy nor an approved policy.update put in force",
                            entry.policy_digest
                        )));
                    }
                }
                if action == Action::PolicyUpdate {
                    if let Some(current) = verified.policies.get(&entry.resource_id) {
                        if *current != entry.policy_digest {
                            return Err(broken(format!(
                                "it changes policy {} under {}, but {current} is that policy's version in force",
                                entry.resource_id, entry.policy_digest
                            )));
                        }
                    }
                }
                if let Some(first) = enforced.insert(entry.change_digest.clone(), entry.sequence) {
                    return Err(broken(format!(
                        "its change digest was already enforced by entry {first}: an approval authorises one change once"
                    )));
                }
                let status = evaluate(&policy, action, &entry.change_digest, &entry.approvals)
                    .map_err(|e| broken(e.to_string()))?;
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
                        // The new policy replaces the old one: approvals under the old are no
                        // longer valid.
                        retire(&mut verified, &mut retired, &entry.policy_digest);
                        verified.policies.insert(entry.resource_id.clone(), new_policy.digest());
                        ever_in_force.insert(new_policy.digest());
                    }
                    (None, Action::PolicyUpdate) => {
                        // A policy.update without a new policy is the policy's deletion.
                        retire(&mut verified, &mut retired, &entry.policy_digest);
                        verified.policies.remove(&entry.resource_id);
                    }
                    (None, _) => {}
                }
            }
        }
    }
    verified.entries = lines.into_iter().map(|(entry, _)| entry).collect();
    verified.head = verified.entries.last().map(|e| AuditHead {
        sequence: e.sequence,
        hash: verified.line_hashes.last().cloned().unwrap_or_default(),
    });
    if let Some(trusted) = options.trusted {
        // The given policy must be one the log put in force (for a log written before
        // policy.create entries, one its entries rely on).
        let relied_on = verified.entries.iter().any(|e| e.policy_digest == trusted.digest());
        let put_in_force = if legacy {
            relied_on
        } else {
            ever_in_force.contains(&trusted.digest())
        };
        if !put_in_force {
            return Err(AuditError::PolicyAbsent {
                digest: trusted.digest(),
            });
        }
    }
    if let Some(head) = options.expect_head {
        verified.holds(head)?;
    }
    Ok(verified)
}

fn retire(verified: &mut VerifiedLog, retired: &mut BTreeSet<String>, digest: &str) {
    verified.bootstrapped.remove(digest);
    verified.policies.retain(|_, d| d != digest);
    retired.insert(digest.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::govern::approval::approve;
    use crate::govern::keys::tests::ed25519_pem;
    use crate::govern::policy::{PolicySpec, RuleSpec, SignerSpec};
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    fn policy_named(name: &str) -> (Policy, String) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let spec = PolicySpec {
            name: name.into(),
            signers: vec![SignerSpec {
                id: "a".into(),
                role: "auditor".into(),
                public_key_pem: Some(ed25519_pem(9)),
                kms_key_id: None,
            }],
            rules: vec![
                RuleSpec {
                    action: "image.publish".into(),
                    threshold: 1,
                    roles: vec!["auditor".into()],
                },
                RuleSpec {
                    action: "policy.update".into(),
                    threshold: 1,
                    roles: vec!["auditor".into()],
                },
            ],
            expires_at: None,
        };
        let policy = Policy::from_spec(&spec, 1, &|_| Err(String::new())).unwrap();
        (policy, key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string())
    }

    fn policy() -> (Policy, String) {
        policy_named("gov")
    }

    fn created(policy: &Policy) -> AuditEntry {
        AuditEntry::record(POLICY_CREATE, "safebox_policy", "pol-1", policy, None, policy.digest())
    }

    fn publish(n: u8) -> Change {
        Change::create(Action::ImagePublish, "safebox_image", format!("sha256:{n:064}"))
    }

    fn entry(policy: &Policy, key: &str, change: &Change, occurrence: u64) -> AuditEntry {
        let digest = change.digest(&policy.digest(), occurrence);
        AuditEntry {
            sequence: 0,
            time: "2026-11-27T12:00:00Z".into(),
            action: change.action.as_str().into(),
            resource_type: change.resource_type.clone(),
            resource_id: "img-1".into(),
            subject: change.subject.clone(),
            from: change.from.clone(),
            to: change.to.clone(),
            occurrence: Some(occurrence),
            change_digest: digest.clone(),
            policy_digest: policy.digest(),
            policy_document: policy.document(),
            new_policy_document: None,
            approvals: vec![approve(key, "a", change.action, &digest).unwrap()],
            previous: None,
            entry_sha256: String::new(),
        }
    }

    /// A log of a policy's creation and `n` image publications.
    fn log(n: u8) -> (tempfile::TempDir, std::path::PathBuf, Policy) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (policy, key) = policy();
        append(&path, created(&policy), None).unwrap();
        for i in 1..=n {
            append(&path, entry(&policy, &key, &publish(i), 0), None).unwrap();
        }
        (dir, path, policy)
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn appended_entries_chain_and_verify_and_any_changed_byte_is_found() {
        let (_dir, path, policy) = log(3);
        let log = read(&path);
        let verified = verify(&log, &VerifyOptions::default()).unwrap();
        assert_eq!(verified.entries.len(), 4);
        assert_eq!(verified.policy_in_force("pol-1"), Some(policy.digest().as_str()));
        verify(
            &log,
            &VerifyOptions {
                trusted: Some(&policy),
                ..VerifyOptions::default()
            },
        )
        .unwrap();

        // Single-byte changes all over the log are detected and name an entry.
        let bytes = log.as_bytes();
        for at in (0..bytes.len()).step_by(3) {
            let mut changed = bytes.to_vec();
            changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
            let Ok(text) = String::from_utf8(changed) else { continue };
            if text == log {
                continue;
            }
            let err = verify(&text, &VerifyOptions::default()).unwrap_err();
            assert!(err.line().is_some_and(|l| (1..=4).contains(&l)), "{err}");
        }
        // Dropping an entry breaks the chain at the entry after it.
        let lines: Vec<&str> = log.lines().collect();
        let dropped = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[3]);
        assert_eq!(verify(&dropped, &VerifyOptions::default()).unwrap_err().line(), Some(3));
    }

    #[test]
    fn a_cut_or_rewritten_log_no_longer_holds_its_head_and_is_not_extended() {
        let (_dir, path, policy) = log(5);
        let full = verify(&read(&path), &VerifyOptions::default()).unwrap();
        let head = full.head.clone().unwrap();
        assert_eq!(head.sequence, 6);
        assert_eq!(head.to_string().parse::<AuditHead>().unwrap(), head);
        let (_, key) = policy_named("gov");
        // Cut to two entries, and to none: each prefix is a valid chain on its own...
        let original = read(&path);
        let lines: Vec<&str> = original.lines().collect();
        for kept in [2, 0] {
            let cut: String = lines[..kept].iter().map(|l| format!("{l}\n")).collect();
            verify(&cut, &VerifyOptions::default()).unwrap();
            // ...but not one that holds the head recorded before,
            let err = verify(
                &cut,
                &VerifyOptions {
                    expect_head: Some(&head),
                    ..VerifyOptions::default()
                },
            )
            .unwrap_err();
            assert!(matches!(err, AuditError::RolledBack { .. }), "{err}");
            assert!(err.to_string().contains(&format!("it has {kept} entries")), "{err}");
            // and nothing is appended after the cut.
            std::fs::write(&path, &cut).unwrap();
            let err = append(&path, entry(&policy, &key, &publish(9), 0), Some(&head)).unwrap_err();
            assert!(matches!(err, AppendError::Log(AuditError::RolledBack { .. })), "{err}");
            assert_eq!(read(&path), cut, "the cut log was not extended");
        }
        // A log rebuilt from scratch with recomputed hashes does not hold the head either.
        std::fs::remove_file(&path).unwrap();
        append(&path, created(&policy), None).unwrap();
        for i in 1..=5 {
            append(&path, entry(&policy, &key, &publish(i + 10), 0), None).unwrap();
        }
        let rewritten = verify(&read(&path), &VerifyOptions::default()).unwrap();
        assert_eq!(rewritten.entries.len(), 6);
        let err = rewritten.holds(&head).unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");
        assert!(append(&path, entry(&policy, &key, &publish(30), 0), Some(&head)).is_err());
    }

    #[test]
    fn a_change_digest_is_enforced_once_and_the_next_identical_change_is_another_occurrence() {
        let (_dir, path, policy) = log(1);
        let (_, key) = policy_named("gov");
        let verified = verify(&read(&path), &VerifyOptions::default()).unwrap();
        let change = publish(1);
        let digest = change.digest(&policy.digest(), 0);
        assert_eq!(verified.consumed(&digest).map(|e| e.sequence), Some(2));
        assert_eq!(verified.occurrences(&change, &policy.digest(), &BTreeSet::new()), 1);
        // Leaving out what this run wrote, the change is as it was planned.
        assert_eq!(verified.occurrences(&change, &policy.digest(), &[2].into()), 0);
        assert!(verified.consumed(&change.digest(&policy.digest(), 1)).is_none());

        // The same approval is not appended twice...
        let err = append(&path, entry(&policy, &key, &change, 0), None).unwrap_err();
        assert!(matches!(err, AppendError::Consumed { sequence: 2, .. }), "{err}");
        // ...and a log that has it twice (written by hand) does not verify.
        let mut forged = entry(&policy, &key, &change, 0);
        forged.sequence = 3;
        forged.previous = verify(&read(&path), &VerifyOptions::default())
            .unwrap()
            .head
            .map(|h| h.hash);
        forged.entry_sha256 = forged.self_digest();
        let line = to_canonical_json(&serde_json::to_value(&forged).unwrap()).unwrap();
        std::fs::write(&path, format!("{}{line}\n", read(&path))).unwrap();
        let err = verify(&read(&path), &VerifyOptions::default()).unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert!(err.to_string().contains("already enforced by entry 2"), "{err}");
    }

    #[test]
    fn only_an_approved_policy_update_may_introduce_a_policy() {
        let (_dir, path, policy) = log(1);
        let (_, key) = policy_named("gov");
        // Someone with write access replays a valid entry and slips in a policy of their own.
        let attacker = policy.clone().with_version(9);
        let mut forged = entry(&policy, &key, &publish(2), 0);
        forged.new_policy_document = Some(attacker.document());
        append(&path, forged, None).unwrap();
        let err = verify(&read(&path), &VerifyOptions::default()).unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert!(err.to_string().contains("only policy.update may"), "{err}");
    }

    #[test]
    fn policies_come_from_their_creation_and_approved_updates_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (policy, key) = policy();
        append(&path, created(&policy), None).unwrap();
        // An update approved by the policy in force puts the new version in force.
        let next = policy.clone().with_version(2);
        let update = Change::update(
            Action::PolicyUpdate,
            "safebox_policy",
            "pol-1",
            policy.digest(),
            next.digest(),
        );
        let mut updated = entry(&policy, &key, &update, 0);
        updated.resource_id = "pol-1".into();
        updated.new_policy_document = Some(next.document());
        append(&path, updated, None).unwrap();
        let verified = verify(&read(&path), &VerifyOptions::default()).unwrap();
        assert_eq!(verified.policy_in_force("pol-1"), Some(next.digest().as_str()));
        // An auditor pinning the new version (no entry relies on it yet) or the old one: both
        // were put in force by the log; a policy it never created is not.
        for pinned in [&next, &policy] {
            verify(
                &read(&path),
                &VerifyOptions {
                    trusted: Some(pinned),
                    ..VerifyOptions::default()
                },
            )
            .unwrap();
        }
        let (stranger, _) = policy_named("stranger");
        let err = verify(
            &read(&path),
            &VerifyOptions {
                trusted: Some(&stranger),
                ..VerifyOptions::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, AuditError::PolicyAbsent { .. }), "{err}");
        // An entry still relying on the old version is refused.
        append(&path, entry(&policy, &key, &publish(1), 0), None).unwrap();
        let err = verify(&read(&path), &VerifyOptions::default()).unwrap_err();
        assert!(err.to_string().contains("replaced or deleted"), "{err}");

        // A policy that no policy.create entry made, in a log that has them, is refused.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (other, other_key) = policy_named("outsider");
        append(&path, created(&policy), None).unwrap();
        append(&path, entry(&other, &other_key, &publish(1), 0), None).unwrap();
        let err = verify(&read(&path), &VerifyOptions::default()).unwrap_err();
        assert_eq!(err.line(), Some(2));
        assert!(err.to_string().contains("neither a policy.create entry"), "{err}");
        // Creating the same policy id twice is refused.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        append(&path, created(&policy), None).unwrap();
        append(&path, created(&other), None).unwrap();
        let err = verify(&read(&path), &VerifyOptions::default()).unwrap_err();
        assert!(err.to_string().contains("created a second time"), "{err}");
    }

    #[test]
    fn an_untrusted_policy_is_refused() {
        let (_dir, path, policy) = log(1);
        let other = policy.clone().with_version(7);
        let err = verify(
            &read(&path),
            &VerifyOptions {
                trusted: Some(&other),
                ..VerifyOptions::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, AuditError::PolicyAbsent { .. }), "{err}");
    }

    #[test]
    fn heads_parse_with_or_without_the_hash_prefix() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        for text in [format!("7:{hash}"), format!("7:{}", "AB".repeat(32))] {
            assert_eq!(
                text.parse::<AuditHead>().unwrap(),
                AuditHead {
                    sequence: 7,
                    hash: hash.clone()
                },
                "{text}"
            );
        }
        for bad in [
            "",
            "7",
            "x:sha256:00",
            "0:sha256:00",
            &format!("0:{}", "ab".repeat(32)),
            "7:sha256:zz",
            "7:sha1:00",
        ] {
            assert!(bad.parse::<AuditHead>().is_err(), "{bad}");
        }
    }
}
