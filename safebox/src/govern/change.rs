//! Governed changes and their digests: what auditors sign.
//!
//! A change is one action on one resource: its type, the instance it applies to (none when
//! one is created), digests of the governed attributes before and after, and how many times
//! the very same change was enforced before (its occurrence). The change digest is
//! `sha256:` of the canonical JSON (RFC 8785) of
//!
//! ```json
//! {"action": "enclave.deploy", "from": null, "occurrence": 0,
//!  "policy_digest": "sha256:…", "resource_type": "safebox_enclave",
//!  "subject": null, "to": "sha256:…", "version": 2}
//! ```
//!
//! so an approval names exactly one change of one resource instance. It is used once: the
//! audit log records every enforced digest, a digest already there is refused, and the next
//! identical change gets the next occurrence and so a digest of its own. Audit entries written
//! before subjects and occurrences existed keep verifying under the version 1 form (the same
//! object without `subject`, `occurrence` and `version`).

use serde_json::json;

use super::Action;
use crate::canonical::{canonical_digest, sha256_tagged};

/// The version of the canonical change document.
pub const CHANGE_VERSION: u64 = 2;

/// One governed change, before a policy and an occurrence make it a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The action.
    pub action: Action,
    /// The resource type, e.g. `safebox_enclave`.
    pub resource_type: String,
    /// The existing instance the change applies to (its id); none when one is created.
    pub subject: Option<String>,
    /// Digest of the governed attributes before (none when creating).
    pub from: Option<String>,
    /// Digest of the governed attributes after.
    pub to: String,
}

impl Change {
    /// A change creating a `resource_type` whose governed attributes digest to `to`.
    #[must_use]
    pub fn create(action: Action, resource_type: &str, to: String) -> Self {
        Self {
            action,
            resource_type: resource_type.to_owned(),
            subject: None,
            from: None,
            to,
        }
    }

    /// A change of the existing instance `subject` from `from` to `to`.
    #[must_use]
    pub fn update(action: Action, resource_type: &str, subject: &str, from: String, to: String) -> Self {
        Self {
            action,
            resource_type: resource_type.to_owned(),
            subject: Some(subject.to_owned()),
            from: Some(from),
            to,
        }
    }

    /// The change digest under the policy with digest `policy_digest`, for the change's
    /// `occurrence`-th enforcement (0 for the first).
    #[must_use]
    pub fn digest(&self, policy_digest: &str, occurrence: u64) -> String {
        change_digest(&ChangeFields {
            action: self.action.as_str(),
            resource_type: &self.resource_type,
            policy_digest,
            subject: self.subject.as_deref(),
            from: self.from.as_deref(),
            to: &self.to,
            occurrence: Some(occurrence),
        })
    }
}

/// The fields a change digest covers, as an audit entry records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeFields<'a> {
    /// The action's name (a governed action, or one of the audit log's own records).
    pub action: &'a str,
    /// The resource type.
    pub resource_type: &'a str,
    /// The governing policy's digest.
    pub policy_digest: &'a str,
    /// The instance changed, if it existed before.
    pub subject: Option<&'a str>,
    /// Governed attributes before.
    pub from: Option<&'a str>,
    /// Governed attributes after.
    pub to: &'a str,
    /// The occurrence; `None` only for version 1 entries, which had none.
    pub occurrence: Option<u64>,
}

/// The change digest of `fields`: version 2 when it has an occurrence, else version 1.
#[must_use]
pub fn change_digest(fields: &ChangeFields<'_>) -> String {
    let document = match fields.occurrence {
        Some(occurrence) => json!({
            "version": CHANGE_VERSION,
            "action": fields.action,
            "resource_type": fields.resource_type,
            "policy_digest": fields.policy_digest,
            "subject": fields.subject,
            "from": fields.from,
            "to": fields.to,
            "occurrence": occurrence,
        }),
        None => json!({
            "action": fields.action,
            "resource_type": fields.resource_type,
            "policy_digest": fields.policy_digest,
            "from": fields.from,
            "to": fields.to,
        }),
    };
    // Strings and small integers only: canonicalisation cannot fail.
    canonical_digest(&document).unwrap_or_default()
}

/// `sha256:` of the canonical JSON of governed attributes.
#[must_use]
pub fn attributes_digest(attributes: &serde_json::Value) -> String {
    canonical_digest(attributes).unwrap_or_else(|_| sha256_tagged(attributes.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented canonical form, hashed by hand: a test that fails if the digest of a
    /// fixed change ever moves, since every approval ever signed names such digests.
    #[test]
    fn the_digest_of_a_fixed_change_is_pinned() {
        let change = Change::create(
            Action::EnclaveDeploy,
            "safebox_enclave",
            "sha256:2222222222222222222222222222222222222222222222222222222222222222".into(),
        );
        let policy = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let canonical = concat!(
            r#"{"action":"enclave.deploy","from":null,"occurrence":0,"#,
            r#""policy_digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","#,
            r#""resource_type":"safebox_enclave","subject":null,"#,
            r#""to":"sha256:2222222222222222222222222222222222222222222222222222222222222222","version":2}"#
        );
        assert_eq!(change.digest(policy, 0), sha256_tagged(canonical.as_bytes()));
        assert_eq!(
            change.digest(policy, 0),
            "sha256:ea9ac1ddb418766c702f8ddb4d095ffa1433d1ea394a36a85c404620446c38b3"
        );
    }

    #[test]
    fn every_field_changes_the_digest() {
        let base = Change::update(
            Action::PolicyUpdate,
            "safebox_policy",
            "pol-1",
            "sha256:from".into(),
            "sha256:to".into(),
        );
        let digest = base.digest("sha256:p", 0);
        let variants = [
            Change {
                action: Action::ImagePublish,
                ..base.clone()
            },
            Change {
                resource_type: "safebox_image".into(),
                ..base.clone()
            },
            Change {
                subject: Some("pol-2".into()),
                ..base.clone()
            },
            Change {
                subject: None,
                ..base.clone()
            },
            Change {
                from: None,
                ..base.clone()
            },
            Change {
                to: "sha256:other".into(),
                ..base.clone()
            },
        ];
        for variant in variants {
            assert_ne!(variant.digest("sha256:p", 0), digest, "{variant:?}");
        }
        assert_ne!(base.digest("sha256:q", 0), digest);
        assert_ne!(base.digest("sha256:p", 1), digest);
    }

    #[test]
    fn version_one_entries_keep_their_digest() {
        let fields = ChangeFields {
            action: "image.publish",
            resource_type: "safebox_image",
            policy_digest: "sha256:p",
            subject: None,
            from: None,
            to: "sha256:to",
            occurrence: None,
        };
        let v1 = r#"{"action":"image.publish","from":null,"policy_digest":"sha256:p","resource_type":"safebox_image","to":"sha256:to"}"#;
        assert_eq!(change_digest(&fields), sha256_tagged(v1.as_bytes()));
    }
}
