//! Attestation-bound keys: the KMS key policy that releases a key only to a box whose
//! attestation document carries given measurements.
//!
//! AWS KMS checks the attestation document a box sends as the `Recipient` of `Decrypt`,
//! `GenerateDataKey` or `DeriveSharedSecret` and exposes its measurements as condition keys
//! (AWS KMS Developer Guide, "Condition keys for Nitro Enclaves" and "Condition keys for
//! NitroTPM"); the answer is encrypted to the box's own key, so not even the caller sees the
//! plaintext. Which keys depends on the document ([`KeyBinding`]):
//!
//! - a Nitro Enclave's (an `"eif"` image): `kms:RecipientAttestation:ImageSha384` (the EIF's
//!   PCR0) and `kms:RecipientAttestation:PCR<n>`;
//! - an EC2 instance's NitroTPM document (a `"uki"` image): `kms:RecipientAttestation:NitroTPMPCR<n>`,
//!   always PCR4 (the UKI the firmware booted) and PCR12 (what was added to its command line),
//!   and PCR7 (the Secure Boot policy) when asked.
//!
//! Values are lower-case hex, compared with `StringEqualsIgnoreCase`. The policy built here:
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

/// The NitroTPM PCRs every key bound to a NitroTPM document binds: the UKI the firmware booted
/// (PCR4) and what was added to its command line (PCR12), together what identifies the image.
pub const NITROTPM_ALWAYS_BOUND: [u32; 2] = [4, 12];

/// What a recipient's attestation document must carry for KMS to release the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBinding {
    /// A Nitro Enclave's document.
    Enclave {
        /// The enclave image's SHA-384 measurement (its PCR0), hex:
        /// `kms:RecipientAttestation:ImageSha384`.
        image_sha384: String,
        /// Further PCRs, index to hex: `kms:RecipientAttestation:PCR<n>`.
        pcrs: BTreeMap<u32, String>,
    },
    /// An EC2 instance's NitroTPM document.
    NitroTpm {
        /// Its PCRs, index to hex, [`NITROTPM_ALWAYS_BOUND`] among them:
        /// `kms:RecipientAttestation:NitroTPMPCR<n>`.
        pcrs: BTreeMap<u32, String>,
    },
}

impl KeyBinding {
    /// The policy conditions, condition key to lower-case hex.
    #[must_use]
    pub fn conditions(&self) -> BTreeMap<String, String> {
        let mut conditions = BTreeMap::new();
        let (prefix, pcrs) = match self {
            Self::Enclave { image_sha384, pcrs } => {
                conditions.insert(self.presence_key().to_owned(), image_sha384.to_ascii_lowercase());
                ("PCR", pcrs)
            }
            Self::NitroTpm { pcrs } => ("NitroTPMPCR", pcrs),
        };
        for (index, value) in pcrs {
            conditions.insert(
                format!("kms:RecipientAttestation:{prefix}{index}"),
                value.to_ascii_lowercase(),
            );
        }
        conditions
    }

    /// The condition key that is present exactly when a request carries a document of this
    /// kind: what the administrators' deny tests for absence.
    #[must_use]
    pub fn presence_key(&self) -> &'static str {
        match self {
            Self::Enclave { .. } => "kms:RecipientAttestation:ImageSha384",
            Self::NitroTpm { .. } => "kms:RecipientAttestation:NitroTPMPCR4",
        }
    }
}

/// What a sealed key is bound to and who administers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKeySpec {
    /// The measurements the recipient's document must carry.
    pub binding: KeyBinding,
    /// IAM principals that administer the key and can never decrypt with it.
    pub administrator_arns: Vec<String>,
    /// IAM principals whose attested boxes may use the key.
    pub recipient_arns: Vec<String>,
}

/// A string that is not an IAM principal ARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IAM principal ARN; write one like arn:aws:iam::123456789012:role/KeyAdmin")]
pub struct NotPrincipalArn(pub String);

/// Checks an IAM principal ARN (`arn:PARTITION:iam::ACCOUNT:...` or `arn:...:sts::ACCOUNT:...`).
///
/// # Errors
/// [`NotPrincipalArn`], which says what an ARN looks like.
pub fn check_principal_arn(arn: &str) -> Result<(), NotPrincipalArn> {
    account_of(arn)
        .map(|_| ())
        .ok_or_else(|| NotPrincipalArn(arn.to_owned()))
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
        let pcrs = match &self.binding {
            KeyBinding::Enclave { image_sha384, pcrs } => {
                if !sha384(image_sha384) {
                    problems.push((
                        FieldPath::attr("image_id"),
                        "the image's PCR0 must be a SHA-384 value (96 hex digits)".to_owned(),
                    ));
                }
                pcrs
            }
            KeyBinding::NitroTpm { pcrs } => {
                for index in NITROTPM_ALWAYS_BOUND {
                    if !pcrs.get(&index).is_some_and(|v| sha384(v)) {
                        problems.push((
                            FieldPath::attr("image_id"),
                            format!("the image's NitroTPM PCR{index} must be a SHA-384 value (96 hex digits)"),
                        ));
                    }
                }
                pcrs
            }
        };
        for (index, value) in pcrs {
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
                    problems.push((FieldPath::attr(name).index(i), reason.to_string()));
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
        let conditions: serde_json::Map<String, Value> = self
            .binding
            .conditions()
            .into_iter()
            .map(|(key, value)| (key, Value::String(value)))
            .collect();
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
                    "Condition": { "Null": { self.binding.presence_key(): "true" } },
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
            binding: KeyBinding::Enclave {
                image_sha384: "AB".repeat(48),
                pcrs: [(0, "ab".repeat(48)), (8, "cd".repeat(48))].into(),
            },
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
    fn a_nitrotpm_binding_pins_pcr4_and_pcr12_and_nothing_of_an_enclave() {
        let mut spec = spec();
        spec.binding = KeyBinding::NitroTpm {
            pcrs: [(4, "4A".repeat(48)), (12, "00".repeat(48))].into(),
        };
        spec.check().unwrap();
        let policy: Value = serde_json::from_str(&spec.policy()).unwrap();
        let conditions = &policy["Statement"][1]["Condition"]["StringEqualsIgnoreCase"];
        assert_eq!(
            conditions,
            &json!({
                "kms:RecipientAttestation:NitroTPMPCR4": "4a".repeat(48),
                "kms:RecipientAttestation:NitroTPMPCR12": "00".repeat(48),
            })
        );
        assert_eq!(
            policy["Statement"][2]["Condition"],
            json!({"Null": {"kms:RecipientAttestation:NitroTPMPCR4": "true"}})
        );
        // PCR4 and PCR12 are what identifies the image: a binding without either is refused.
        spec.binding = KeyBinding::NitroTpm {
            pcrs: [(4, "4a".repeat(48)), (7, "77".repeat(48))].into(),
        };
        let problems = spec.check().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("PCR12"), "{problems:?}");
    }

    #[test]
    fn bad_arns_and_measurements_are_named() {
        let mut bad = spec();
        bad.binding = KeyBinding::Enclave {
            image_sha384: "xyz".into(),
            pcrs: BTreeMap::new(),
        };
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
