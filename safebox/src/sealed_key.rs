//! Attestation-bound keys: the KMS key policy that releases a key only to an enclave whose
//! attestation document carries given measurements.
//!
//! AWS KMS checks the attestation document an enclave sends as the `Recipient` of `Decrypt`,
//! `GenerateDataKey` or `DeriveSharedSecret` and exposes its measurements as the condition keys
//! `kms:RecipientAttestation:ImageSha384` and `kms:RecipientAttestation:PCR<n>`; the answer is
//! encrypted to the enclave's own key, so not even the caller sees the plaintext. The policy
//! built here:
//!
//! - lets the recipients use those three operations only when every bound measurement matches;
//! - lets the administrators see, tag, disable and delete the key, and nothing else: no
//!   `kms:PutKeyPolicy` and no `kms:CreateGrant`, so nobody can loosen the binding later (a
//!   different binding is a new key);
//! - denies the administrators every plaintext-releasing operation without an attestation, even
//!   if another policy of theirs would allow it.
//!
//! The document is canonical JSON (RFC 8785), so its digest is stable and shown in the plan.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::canonical;
use crate::field::FieldPath;

/// Operations that hand out key material, allowed only against an attestation.
pub const ATTESTED_OPERATIONS: [&str; 3] = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DeriveSharedSecret"];

/// Every operation that could release plaintext or re-wrap it elsewhere.
const PLAINTEXT_OPERATIONS: [&str; 7] = [
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:DeriveSharedSecret",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:CreateGrant",
];

/// What administrators may do: look, tag, switch off, delete. Never change the policy.
const ADMIN_OPERATIONS: [&str; 11] = [
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListResourceTags",
    "kms:ListGrants",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
];

/// What a sealed key is bound to and who administers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKeySpec {
    /// The enclave image's SHA-384 measurement (its PCR0), hex.
    pub image_sha384: String,
    /// Further PCRs the recipient's document must carry, index to hex.
    pub pcrs: BTreeMap<u32, String>,
    /// IAM principals that administer the key and can never decrypt with it.
    pub administrator_arns: Vec<String>,
    /// IAM principals whose attested enclaves may use the key.
    pub recipient_arns: Vec<String>,
}

/// Checks an IAM principal ARN (`arn:PARTITION:iam::ACCOUNT:...` or `arn:...:sts::ACCOUNT:...`).
///
/// # Errors
/// A sentence saying what is wrong and what an ARN looks like.
pub fn check_principal_arn(arn: &str) -> Result<(), String> {
    account_of(arn).map(|_| ()).ok_or_else(|| {
        format!("{arn:?} is not an IAM principal ARN; write one like arn:aws:iam::123456789012:role/KeyAdmin")
    })
}

/// The 12-digit account of an IAM principal ARN.
#[must_use]
pub fn account_of(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts.as_slice() else {
        return None;
    };
    let ok = *prefix == "arn"
        && partition.starts_with("aws")
        && matches!(*service, "iam" | "sts")
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !resource.is_empty();
    ok.then_some(*account)
}

/// The default recipients: the root principal of every administrator's account (so IAM
/// policies in those accounts decide which roles may ask, and the key policy decides which
/// enclaves may receive).
#[must_use]
pub fn default_recipients(administrator_arns: &[String]) -> Vec<String> {
    let mut roots: Vec<String> = administrator_arns
        .iter()
        .filter_map(|arn| {
            let partition = arn.split(':').nth(1)?;
            Some(format!("arn:{partition}:iam::{}:root", account_of(arn)?))
        })
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

impl SealedKeySpec {
    /// Checks the spec; each problem names its field.
    ///
    /// # Errors
    /// Every problem found.
    pub fn check(&self) -> Result<(), Vec<(FieldPath, String)>> {
        let mut problems = Vec::new();
        let sha384 = |h: &str| h.len() == 96 && h.bytes().all(|b| b.is_ascii_hexdigit());
        if !sha384(&self.image_sha384) {
            problems.push((
                FieldPath::attr("image_id"),
                "the image's PCR0 must be a SHA-384 value (96 hex digits)".to_owned(),
            ));
        }
        for (index, value) in &self.pcrs {
            if *index > 31 || !sha384(value) {
                problems.push((
                    FieldPath::attr("bind_pcrs"),
                    format!("PCR{index} must be an index from 0 to 31 with a SHA-384 value"),
                ));
            }
        }
        for (name, arns) in [
            ("administrator_arns", &self.administrator_arns),
            ("recipient_arns", &self.recipient_arns),
        ] {
            if arns.is_empty() {
                problems.push((FieldPath::attr(name), "must name at least one IAM principal".to_owned()));
            }
            for (i, arn) in arns.iter().enumerate() {
                if let Err(reason) = check_principal_arn(arn) {
                    problems.push((FieldPath::attr(name).index(i), reason));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The key policy document, canonical JSON.
    #[must_use]
    pub fn policy(&self) -> String {
        let mut conditions = serde_json::Map::new();
        conditions.insert(
            "kms:RecipientAttestation:ImageSha384".into(),
            Value::String(self.image_sha384.to_ascii_lowercase()),
        );
        for (index, value) in &self.pcrs {
            conditions.insert(
                format!("kms:RecipientAttestation:PCR{index}"),
                Value::String(value.to_ascii_lowercase()),
            );
        }
        let document = json!({
            "Version": "2012-10-17",
            "Id": "safebox-sealed-key",
            "Statement": [
                {
                    "Sid": "AdministratorsManageButNeverDecrypt",
                    "Effect": "Allow",
                    "Principal": { "AWS": self.administrator_arns },
                    "Action": ADMIN_OPERATIONS,
                    "Resource": "*",
                },
                {
                    "Sid": "AttestedEnclavesOnly",
                    "Effect": "Allow",
                    "Principal": { "AWS": self.recipient_arns },
                    "Action": ATTESTED_OPERATIONS,
                    "Resource": "*",
                    "Condition": { "StringEqualsIgnoreCase": conditions },
                },
                {
                    "Sid": "NoPlaintextForAdministrators",
                    "Effect": "Deny",
                    "Principal": { "AWS": self.administrator_arns },
                    "Action": PLAINTEXT_OPERATIONS,
                    "Resource": "*",
                    "Condition": { "Null": { "kms:RecipientAttestation:ImageSha384": "true" } },
                },
            ],
        });
        // Built from strings and arrays only, so it always has a canonical form.
        canonical::to_canonical_json(&document).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SealedKeySpec {
        SealedKeySpec {
            image_sha384: "AB".repeat(48),
            pcrs: [(0, "ab".repeat(48)), (8, "cd".repeat(48))].into(),
            administrator_arns: vec!["arn:aws:iam::123456789012:role/KeyAdmin".into()],
            recipient_arns: default_recipients(&["arn:aws:iam::123456789012:role/KeyAdmin".into()]),
        }
    }

    #[test]
    fn the_policy_binds_every_measurement_and_never_lets_admins_decrypt() {
        let spec = spec();
        spec.check().unwrap();
        let policy: Value = serde_json::from_str(&spec.policy()).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        let attested = &statements[1];
        assert_eq!(attested["Principal"]["AWS"], json!(["arn:aws:iam::123456789012:root"]));
        let conditions = &attested["Condition"]["StringEqualsIgnoreCase"];
        assert_eq!(
            conditions["kms:RecipientAttestation:ImageSha384"],
            json!("ab".repeat(48))
        );
        assert_eq!(conditions["kms:RecipientAttestation:PCR8"], json!("cd".repeat(48)));
        let admin = statements[0]["Action"].as_array().unwrap();
        for forbidden in [
            "kms:Decrypt",
            "kms:PutKeyPolicy",
            "kms:CreateGrant",
            "kms:GenerateDataKey",
        ] {
            assert!(!admin.contains(&json!(forbidden)), "{forbidden}");
        }
        assert_eq!(statements[2]["Effect"], json!("Deny"));
        // Exactly these administrative actions, each a literal name: a wildcard such as
        // `kms:*` contains no "kms:PutKeyPolicy" but grants it (the acceptance tests evaluate
        // the whole policy, see safebox-acceptance-tests' kms_policy).
        let mut granted: Vec<&str> = admin.iter().filter_map(Value::as_str).collect();
        granted.sort_unstable();
        assert_eq!(
            granted,
            [
                "kms:CancelKeyDeletion",
                "kms:DescribeKey",
                "kms:DisableKey",
                "kms:EnableKey",
                "kms:GetKeyPolicy",
                "kms:GetKeyRotationStatus",
                "kms:ListGrants",
                "kms:ListResourceTags",
                "kms:ScheduleKeyDeletion",
                "kms:TagResource",
                "kms:UntagResource",
            ]
        );
        for statement in statements {
            let actions = statement["Action"].as_array().unwrap();
            assert!(
                actions
                    .iter()
                    .filter_map(Value::as_str)
                    .all(|a| !a.contains(['*', '?'])),
                "a wildcard action in {statement}"
            );
            assert!(
                statement["Principal"]["AWS"]
                    .as_array()
                    .is_some_and(|p| !p.contains(&json!("*"))),
                "a wildcard principal in {statement}"
            );
        }
        // Canonical: the same spec always gives the same bytes.
        assert_eq!(spec.policy(), spec.clone().policy());
    }

    #[test]
    fn bad_arns_and_measurements_are_named() {
        let mut bad = spec();
        bad.image_sha384 = "xyz".into();
        bad.administrator_arns = vec!["KeyAdmin".into(), "arn:aws:s3:::bucket".into()];
        bad.recipient_arns = vec![];
        let problems = bad.check().unwrap_err();
        let fields: Vec<String> = problems.iter().map(|(f, _)| f.to_string()).collect();
        assert!(fields.contains(&"image_id".to_owned()), "{fields:?}");
        assert!(fields.contains(&"administrator_arns[0]".to_owned()), "{fields:?}");
        assert!(fields.contains(&"administrator_arns[1]".to_owned()), "{fields:?}");
        assert!(fields.contains(&"recipient_arns".to_owned()), "{fields:?}");
        assert_eq!(
            account_of("arn:aws:sts::123456789012:assumed-role/A/b"),
            Some("123456789012")
        );
        assert_eq!(account_of("arn:aws:iam::12345678901:root"), None);
    }
}
