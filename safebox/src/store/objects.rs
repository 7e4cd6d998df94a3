//! The primitives every store is made of, and the store kept as objects in a bucket.
//!
//! [`Objects`] is what a place that holds named byte strings offers: read an object with its
//! [`Version`], write one on a [`Condition`] (that it does not exist yet, or that it is still
//! at the version read), delete one, and list every version of the keys under a prefix.
//! S3 offers exactly that (`If-None-Match: *` and `If-Match: <ETag>` on `PutObject`,
//! `ListObjectVersions`); a folder offers it too, with the store's lock file standing in for
//! the conditional write ([`super::FolderStore`]). Records, approvals and the apply lease are
//! written the same way on both, by the functions here and in [`super::lease`].
//!
//! [`ObjectStore`] is the [`Store`] of a bucket. Under its prefix:
//!
//! | key | what |
//! | --- | --- |
//! | `records/<kind>/<id>.json` | a record, created with `If-None-Match: *`, replaced with `If-Match` |
//! | `approvals/<change_digest>/<signer>.json` | a signed approval (`safebox approve --to`) |
//! | `audit/<20-digit sequence>.json` | one audit entry: its canonical JSON line, created with `If-None-Match: *` |
//! | `lease.json` | the apply lease ([`super::lease`]) |
//!
//! The audit log is read by listing every version under `audit/`: the entries must be
//! numbered 1, 2, 3… without a gap, each key must have exactly one version (a second version
//! is a rewrite, a delete marker a removal), and nothing else may be there
//! ([`check_audit_listing`]). The bucket's Object Lock (compliance mode) is what makes a
//! rewrite impossible rather than merely visible; [`BucketProtection::check`] is the check of
//! that configuration that the provider makes before it writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use super::lease::{self, LeaseAttempt, LeaseBody, LeaseToken, Liveness};
use super::{check_change_digest, check_key_part, Store, StoredRecord, LEASE_KEY};
use crate::cloud::{check_record_id, CloudError, RecordKind};
use crate::govern::approval::{parse_approvals, Approval, ApprovalsFolder, NotApprovals, MAX_APPROVALS_FILE};
use crate::govern::audit::{self, AuditEntry, AuditHead};

/// An object's version as its store names it (an S3 ETag; a file's SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

/// An object as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its bytes.
    pub body: Vec<u8>,
    /// The version they are.
    pub version: Version,
}

/// On what a write is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    /// Whatever is there (an approval its signer gives again).
    Any,
    /// Only if no object has the key (`If-None-Match: *`).
    Absent,
    /// Only if the object is still at this version (`If-Match: <ETag>`).
    Matches(&'a Version),
}

/// One version of one key, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key, relative to the store's prefix.
    pub key: String,
    /// The store's id of this version (`None` where there are no versions, in a folder).
    pub version_id: Option<String>,
    /// Whether it is the key's current version.
    pub latest: bool,
    /// Whether this version is a delete marker (the key was deleted).
    pub delete_marker: bool,
    /// Its size in bytes.
    pub size: u64,
}

/// Named byte strings with versions and conditional writes: an S3 bucket under a prefix, or a
/// folder.
#[async_trait]
pub trait Objects: Send + Sync {
    /// Where the objects are (`s3://bucket/prefix`, a folder), for messages.
    fn location(&self) -> String;

    /// The current version of `key`; `None` when there is none.
    async fn get(&self, key: &str) -> Result<Option<Object>, CloudError>;

    /// The bytes of version `version_id` of `key` (the current one when `None`).
    async fn get_version(&self, key: &str, version_id: Option<&str>) -> Result<Vec<u8>, CloudError>;

    /// Writes `body` to `key` if `condition` holds; returns the new version.
    ///
    /// # Errors
    /// [`CloudError::Precondition`] when the condition does not hold (nothing was written).
    async fn put(&self, key: &str, body: &[u8], condition: Condition<'_>) -> Result<Version, CloudError>;

    /// Deletes `key` (in a versioned bucket: adds a delete marker), if it is still at
    /// `version` when one is given. Deleting a missing key is not an error.
    async fn delete(&self, key: &str, version: Option<&Version>) -> Result<(), CloudError>;

    /// Every version of every key under `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, CloudError>;

    /// How the objects are protected from being rewritten; `None` where nothing protects them
    /// (a folder).
    async fn protection(&self) -> Result<Option<BucketProtection>, CloudError> {
        Ok(None)
    }
}

/// Writes `body` to `key` on `condition`. A write whose answer was lost and which the client
/// sent again finds its own bytes there and fails its condition: it succeeded, and is
/// reported so.
///
/// # Errors
/// [`CloudError::Precondition`] when another body is there, or the store's errors.
pub async fn put_once<O: Objects + ?Sized>(
    objects: &O,
    key: &str,
    body: &[u8],
    condition: Condition<'_>,
) -> Result<Version, CloudError> {
    match objects.put(key, body, condition).await {
        Err(CloudError::Precondition { .. }) if condition != Condition::Any => match objects.get(key).await? {
            Some(found) if found.body == body => Ok(found.version),
            _ => Err(precondition(objects, key, condition)),
        },
        other => other,
    }
}

/// The error of a conditional write of `key` that found something else.
pub fn precondition<O: Objects + ?Sized>(objects: &O, key: &str, condition: Condition<'_>) -> CloudError {
    CloudError::Precondition {
        location: objects.location(),
        key: key.to_owned(),
        found: if condition == Condition::Absent {
            "exists already"
        } else {
            "changed since it was read"
        },
    }
}

/// The key of record `kind`/`id` under `root` (`records/` in a bucket, nothing in a folder).
fn record_key(root: &str, kind: RecordKind, id: &str) -> Result<String, CloudError> {
    check_record_id(kind, id)?;
    Ok(format!("{root}{kind}/{id}.json"))
}

/// The prefix of the approvals of `digest`.
fn approvals_prefix(digest: &str) -> Result<String, CloudError> {
    check_change_digest(digest)?;
    Ok(format!("approvals/{digest}/"))
}

/// The approvals stored for `digest`: every current `*.json` object of `approvals/<digest>/`.
/// Objects that are too large or are not approvals are passed over with a reason (skipping
/// can only leave an approval uncounted, never count one).
async fn read_approvals<O: Objects + ?Sized>(objects: &O, digest: &str) -> Result<ApprovalsFolder, CloudError> {
    let prefix = approvals_prefix(digest)?;
    let mut folder = ApprovalsFolder {
        exists: true,
        ..ApprovalsFolder::default()
    };
    for listed in objects.list(&prefix).await? {
        if !listed.latest || listed.delete_marker || !listed.key.ends_with(".json") {
            continue;
        }
        let name = format!("{}/{}", objects.location().trim_end_matches('/'), listed.key);
        if listed.size > MAX_APPROVALS_FILE {
            folder.skipped.push(format!("{name}: {}", NotApprovals::TooLarge));
            continue;
        }
        let body = objects.get_version(&listed.key, listed.version_id.as_deref()).await?;
        let parsed = std::str::from_utf8(&body)
            .map_err(|_| NotApprovals::NotText)
            .and_then(parse_approvals);
        match parsed {
            Ok(found) => folder.approvals.extend(found),
            Err(reason) => folder.skipped.push(format!("{name}: {reason}")),
        }
    }
    Ok(folder)
}

/// Stores `approval` at `approvals/<digest>/<signer>.json`; returns its key.
async fn put_approval<O: Objects + ?Sized>(objects: &O, approval: &Approval) -> Result<String, CloudError> {
    check_key_part("signer", &approval.signer)?;
    let key = format!("{}{}.json", approvals_prefix(&approval.digest)?, approval.signer);
    let text = serde_json::to_string_pretty(approval).map_err(|e| CloudError::Damaged {
        location: objects.location(),
        key: key.clone(),
        reason: e.to_string(),
    })?;
    // A signer who signs again replaces their approval (ECDSA signatures differ each time).
    objects
        .put(&key, format!("{text}\n").as_bytes(), Condition::Any)
        .await?;
    Ok(key)
}

/// The key of audit entry `sequence`: `audit/` and the sequence in 20 digits (every `u64`
/// fits), so that keys sort as the entries do.
#[must_use]
pub fn audit_key(sequence: u64) -> String {
    format!("{AUDIT_PREFIX}{sequence:020}.json")
}

/// Where the audit entries are, under a bucket store's prefix.
pub const AUDIT_PREFIX: &str = "audit/";

fn audit_sequence(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(AUDIT_PREFIX)?.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// Why the objects under `audit/` are not a whole log, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditObjectsError {
    /// An entry between the first and the last is missing.
    #[error("entry {sequence} ({key}) is missing, though later entries exist: it was deleted. Restore it from a backup or from its locked version")]
    Missing {
        /// The missing sequence number.
        sequence: u64,
        /// Its key.
        key: String,
    },
    /// An entry has more than one version: it was written again, or deleted.
    #[error("entry {sequence} ({key}) has {versions} versions{}: an entry is written once, so it was rewritten or deleted after it was logged", if *.deleted { " (one of them a delete marker)" } else { "" })]
    Rewritten {
        /// The entry's sequence number.
        sequence: u64,
        /// Its key.
        key: String,
        /// How many versions it has.
        versions: usize,
        /// Whether one of them is a delete marker.
        deleted: bool,
    },
    /// Something under `audit/` that is not an entry.
    #[error("{key} is not an audit entry (entries are audit/<20-digit sequence>.json): something else wrote to the log's prefix")]
    Stray {
        /// The key.
        key: String,
    },
}

impl AuditObjectsError {
    /// The sequence number of the entry at fault, when one is.
    #[must_use]
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Self::Missing { sequence, .. } | Self::Rewritten { sequence, .. } => Some(*sequence),
            Self::Stray { .. } => None,
        }
    }
}

/// Checks a listing of every version under `audit/` and returns the entries in order, one
/// listed version each.
///
/// # Errors
/// The first stray key, rewritten entry or gap.
pub fn check_audit_listing(listing: &[Listed]) -> Result<Vec<&Listed>, AuditObjectsError> {
    let mut by_sequence: BTreeMap<u64, Vec<&Listed>> = BTreeMap::new();
    for listed in listing {
        let sequence = audit_sequence(&listed.key).ok_or_else(|| AuditObjectsError::Stray {
            key: listed.key.clone(),
        })?;
        by_sequence.entry(sequence).or_default().push(listed);
    }
    let mut entries = Vec::with_capacity(by_sequence.len());
    for (expected, (sequence, versions)) in (1u64..).zip(by_sequence) {
        if sequence != expected {
            return Err(AuditObjectsError::Missing {
                sequence: expected,
                key: audit_key(expected),
            });
        }
        let deleted = versions.iter().any(|v| v.delete_marker);
        match versions.as_slice() {
            [only] if !deleted => entries.push(*only),
            _ => {
                return Err(AuditObjectsError::Rewritten {
                    sequence,
                    key: audit_key(sequence),
                    versions: versions.len(),
                    deleted,
                })
            }
        }
    }
    Ok(entries)
}

/// How a bucket keeps what is written: its versioning and Object Lock configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketProtection {
    /// The bucket's name, for the fixes.
    pub bucket: String,
    /// Versioning status (`Enabled`, `Suspended`; `None` when never configured).
    pub versioning: Option<String>,
    /// Whether Object Lock is enabled.
    pub object_lock: bool,
    /// The default retention's mode (`COMPLIANCE`, `GOVERNANCE`), if there is a default.
    pub mode: Option<String>,
    /// The default retention in days, when given in days.
    pub days: Option<i64>,
    /// The default retention in years, when given in years.
    pub years: Option<i64>,
}

/// Why a bucket does not keep the audit log write-once: the setting and its fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtectionError {
    /// Versioning is off or suspended.
    #[error("its versioning is {status}, not Enabled (a rewritten entry would leave no trace). Fix: aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled")]
    Versioning {
        /// The bucket.
        bucket: String,
        /// What it is.
        status: String,
    },
    /// Object Lock is not enabled.
    #[error("Object Lock is not enabled (ObjectLockEnabled), so anyone who may write can delete entries. Fix: aws s3api put-object-lock-configuration --bucket {bucket} --object-lock-configuration '{{\"ObjectLockEnabled\":\"Enabled\",\"Rule\":{{\"DefaultRetention\":{{\"Mode\":\"COMPLIANCE\",\"Days\":{days}}}}}}}'")]
    ObjectLock {
        /// The bucket.
        bucket: String,
        /// The retention to set.
        days: i64,
    },
    /// The default retention is missing, not in compliance mode, or too short.
    #[error("its default retention (Object Lock Rule.DefaultRetention) is {found}, not COMPLIANCE for at least {days} days (audit_retention_days). Fix: aws s3api put-object-lock-configuration --bucket {bucket} --object-lock-configuration '{{\"ObjectLockEnabled\":\"Enabled\",\"Rule\":{{\"DefaultRetention\":{{\"Mode\":\"COMPLIANCE\",\"Days\":{days}}}}}}}'")]
    Retention {
        /// The bucket.
        bucket: String,
        /// What it is.
        found: String,
        /// The retention needed.
        days: i64,
    },
}

impl BucketProtection {
    /// The default retention in days (years count 365 days, as S3 counts them). A retention
    /// is given in days or in years; some answers give the other as 0.
    #[must_use]
    pub fn retention_days(&self) -> Option<i64> {
        match (self.days.filter(|d| *d > 0), self.years.filter(|y| *y > 0)) {
            (Some(days), _) => Some(days),
            (None, Some(years)) => Some(years.saturating_mul(365)),
            (None, None) => None,
        }
    }

    /// Checks that the bucket is versioned and locks every new object in compliance mode for
    /// at least `min_days`.
    ///
    /// # Errors
    /// The first setting that falls short, with its fix.
    pub fn check(&self, min_days: i64) -> Result<(), ProtectionError> {
        let bucket = self.bucket.clone();
        if self.versioning.as_deref() != Some("Enabled") {
            return Err(ProtectionError::Versioning {
                bucket,
                status: self.versioning.clone().unwrap_or_else(|| "off".into()),
            });
        }
        if !self.object_lock {
            return Err(ProtectionError::ObjectLock { bucket, days: min_days });
        }
        let found = match (self.mode.as_deref(), self.retention_days()) {
            (Some("COMPLIANCE"), Some(days)) if days >= min_days => return Ok(()),
            (None, _) | (_, None) => "not set".to_owned(),
            (Some(mode), Some(days)) => format!("{mode} for {days} days"),
        };
        Err(ProtectionError::Retention {
            bucket,
            found,
            days: min_days,
        })
    }
}

/// The [`Store`] of a bucket: records, approvals, the audit log and the apply lease as objects
/// under one prefix (the layout is in the module's docs).
pub struct ObjectStore<O> {
    objects: O,
    /// Where records are (`records/` in a bucket; a folder keeps them at its top).
    records: &'static str,
    /// How another run's lease is judged.
    liveness: Liveness,
    /// Audit entries read before, by key and version id: a version never changes.
    entries: Mutex<HashMap<(String, String), String>>,
}

/// How often an append is tried again when another writer took its sequence number first.
const APPEND_ATTEMPTS: usize = 3;

impl<O: Objects> ObjectStore<O> {
    /// The store over `objects`, a bucket shared between machines.
    pub fn new(objects: O) -> Self {
        Self::with_layout(objects, "records/", Liveness::ExpiryOnly)
    }

    /// The store over `objects` with records under `records` and leases judged by `liveness`.
    pub(crate) fn with_layout(objects: O, records: &'static str, liveness: Liveness) -> Self {
        Self {
            objects,
            records,
            liveness,
            entries: Mutex::default(),
        }
    }

    /// The objects it keeps.
    pub fn objects(&self) -> &O {
        &self.objects
    }

    fn audit_error(&self, source: AuditObjectsError) -> CloudError {
        CloudError::AuditObjects {
            location: self.objects.location(),
            source,
        }
    }

    async fn entry_text(&self, listed: &Listed) -> Result<String, CloudError> {
        let cache_key = (listed.key.clone(), listed.version_id.clone().unwrap_or_default());
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cache_key)
            .cloned();
        if let Some(text) = cached {
            return Ok(text);
        }
        let body = self
            .objects
            .get_version(&listed.key, listed.version_id.as_deref())
            .await?;
        // A body that is not text stays in the log as the replacement character: the chain
        // check then names this entry as changed.
        let text = String::from_utf8_lossy(&body).trim_end_matches('\n').to_owned();
        if listed.version_id.is_some() {
            self.entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(cache_key, text.clone());
        }
        Ok(text)
    }
}

#[async_trait]
impl<O: Objects> Store for ObjectStore<O> {
    fn location(&self) -> String {
        self.objects.location()
    }

    async fn get_record(&self, kind: RecordKind, id: &str) -> Result<Option<StoredRecord>, CloudError> {
        let key = record_key(self.records, kind, id)?;
        Ok(self.objects.get(&key).await?.map(|object| StoredRecord {
            body: object.body,
            version: object.version,
        }))
    }

    async fn put_record(
        &self,
        kind: RecordKind,
        id: &str,
        body: &[u8],
        expected: Option<&Version>,
    ) -> Result<Version, CloudError> {
        let key = record_key(self.records, kind, id)?;
        let condition = expected.map_or(Condition::Absent, Condition::Matches);
        put_once(&self.objects, &key, body, condition)
            .await
            .map_err(|e| match e {
                CloudError::Precondition { location, .. } => CloudError::RecordChanged {
                    kind,
                    id: id.to_owned(),
                    location,
                    how: if expected.is_none() { "created" } else { "changed" },
                },
                other => other,
            })
    }

    async fn delete_record(&self, kind: RecordKind, id: &str) -> Result<(), CloudError> {
        self.objects.delete(&record_key(self.records, kind, id)?, None).await
    }

    async fn read_audit(&self) -> Result<String, CloudError> {
        let listing = self.objects.list(AUDIT_PREFIX).await?;
        let entries = check_audit_listing(&listing).map_err(|e| self.audit_error(e))?;
        let mut text = String::new();
        for listed in entries {
            text.push_str(&self.entry_text(listed).await?);
            text.push('\n');
        }
        Ok(text)
    }

    async fn append_audit(&self, entry: AuditEntry, floor: Option<&AuditHead>) -> Result<AuditHead, CloudError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let existing = self.read_audit().await?;
            let (line, head) = audit::extend(&existing, entry.clone(), floor).map_err(|source| CloudError::Audit {
                location: self.objects.location(),
                source,
            })?;
            let key = audit_key(head.sequence);
            match put_once(&self.objects, &key, line.as_bytes(), Condition::Absent).await {
                Ok(_) => return Ok(head),
                // Another writer took this sequence number first: read the log again, which
                // also checks again that this change was not logged by it.
                Err(CloudError::Precondition { .. }) if attempt < APPEND_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_approvals(&self, digest: &str) -> Result<ApprovalsFolder, CloudError> {
        read_approvals(&self.objects, digest).await
    }

    async fn put_approval(&self, approval: &Approval) -> Result<String, CloudError> {
        put_approval(&self.objects, approval).await
    }

    async fn try_lease(&self, mine: &LeaseBody, now: time::OffsetDateTime) -> Result<LeaseAttempt, CloudError> {
        lease::attempt(&self.objects, LEASE_KEY, (mine, self.liveness), now).await
    }

    async fn release_lease(&self, token: &LeaseToken) -> Result<(), CloudError> {
        lease::release(&self.objects, LEASE_KEY, token).await
    }

    async fn check_protection(&self, min_retention_days: i64) -> Result<(), CloudError> {
        match self.objects.protection().await? {
            Some(protection) => protection
                .check(min_retention_days)
                .map_err(|source| CloudError::Unprotected {
                    location: self.objects.location(),
                    source,
                }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(key: &str, id: &str, marker: bool) -> Listed {
        Listed {
            key: key.to_owned(),
            version_id: Some(id.to_owned()),
            latest: true,
            delete_marker: marker,
            size: 10,
        }
    }

    #[test]
    fn audit_keys_sort_as_their_sequences() {
        assert_eq!(audit_key(7), "audit/00000000000000000007.json");
        assert_eq!(audit_sequence(&audit_key(u64::MAX)), Some(u64::MAX));
        for bad in [
            "audit/7.json",
            "audit/00000000000000000000.json",
            "audit/x.json",
            "other",
        ] {
            assert_eq!(audit_sequence(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_listing_with_a_gap_a_second_version_or_a_stray_key_names_it() {
        let whole = [version(&audit_key(1), "a", false), version(&audit_key(2), "b", false)];
        assert_eq!(check_audit_listing(&whole).unwrap().len(), 2);
        assert_eq!(check_audit_listing(&[]).unwrap().len(), 0);

        let gap = [version(&audit_key(1), "a", false), version(&audit_key(3), "c", false)];
        let err = check_audit_listing(&gap).unwrap_err();
        assert_eq!(err.sequence(), Some(2));
        assert!(
            err.to_string()
                .contains("entry 2 (audit/00000000000000000002.json) is missing"),
            "{err}"
        );
        let first_gone = [version(&audit_key(2), "b", false)];
        assert_eq!(check_audit_listing(&first_gone).unwrap_err().sequence(), Some(1));

        let rewritten = [
            version(&audit_key(1), "a", false),
            version(&audit_key(2), "b2", false),
            version(&audit_key(2), "b1", false),
        ];
        let err = check_audit_listing(&rewritten).unwrap_err();
        assert!(
            matches!(
                err,
                AuditObjectsError::Rewritten {
                    sequence: 2,
                    versions: 2,
                    deleted: false,
                    ..
                }
            ),
            "{err}"
        );
        let removed = [version(&audit_key(1), "a", false), version(&audit_key(1), "m", true)];
        let err = check_audit_listing(&removed).unwrap_err();
        assert!(err.to_string().contains("a delete marker"), "{err}");
        let only_marker = [version(&audit_key(1), "m", true)];
        assert!(matches!(
            check_audit_listing(&only_marker).unwrap_err(),
            AuditObjectsError::Rewritten { deleted: true, .. }
        ));

        let stray = [
            version(&audit_key(1), "a", false),
            version("audit/notes.txt", "n", false),
        ];
        assert!(matches!(
            check_audit_listing(&stray).unwrap_err(),
            AuditObjectsError::Stray { .. }
        ));
    }

    #[test]
    fn only_a_versioned_compliance_locked_bucket_of_enough_days_passes() {
        let good = BucketProtection {
            bucket: "b".into(),
            versioning: Some("Enabled".into()),
            object_lock: true,
            mode: Some("COMPLIANCE".into()),
            days: None,
            years: Some(7),
        };
        good.check(2555).unwrap();
        let cases: Vec<(BucketProtection, &str)> = vec![
            (
                BucketProtection {
                    versioning: None,
                    ..good.clone()
                },
                "versioning is off",
            ),
            (
                BucketProtection {
                    versioning: Some("Suspended".into()),
                    ..good.clone()
                },
                "put-bucket-versioning --bucket b",
            ),
            (
                BucketProtection {
                    object_lock: false,
                    ..good.clone()
                },
                "ObjectLockEnabled",
            ),
            (
                BucketProtection {
                    mode: Some("GOVERNANCE".into()),
                    ..good.clone()
                },
                "is GOVERNANCE for 2555 days",
            ),
            (
                BucketProtection {
                    mode: None,
                    years: None,
                    ..good.clone()
                },
                "is not set",
            ),
            (
                BucketProtection {
                    days: Some(30),
                    ..good.clone()
                },
                "COMPLIANCE for 30 days, not COMPLIANCE for at least 2555 days",
            ),
        ];
        for (protection, says) in cases {
            let err = protection.check(2555).unwrap_err();
            assert!(err.to_string().contains(says), "{err} does not say {says}");
            assert!(err.to_string().contains("Fix: aws s3api"), "{err}");
        }
    }
}
