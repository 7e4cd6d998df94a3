//! A governance policy: who may approve which action, and how many of them must.
//!
//! [`PolicySpec`] is what a user writes; [`Policy::from_spec`] checks it as a whole (every
//! problem is reported, each at its [`FieldPath`]) and [`Policy::document`] is its canonical
//! JSON (RFC 8785), whose SHA-256 is the policy digest auditors compare. The document orders
//! signers by id and rules by action, so reordering blocks in configuration changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::keys::{KeyError, PublicKey};
use super::{Action, UnknownAction};
use crate::canonical::{sha256_tagged, to_canonical_json};
use crate::field::FieldPath;

/// The `schema` value of policy documents this version writes and reads.
pub const POLICY_SCHEMA: &str = "safebox-policy/v1";

/// Why a stored or logged policy document is not a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON.
    #[error("the policy document is not JSON ({0})")]
    NotJson(String),
    /// Another schema.
    #[error("the document's schema is {0}, not {POLICY_SCHEMA:?}")]
    Schema(String),
    /// A field is missing or of the wrong type.
    #[error("the policy document has no valid {0:?}")]
    Missing(&'static str),
    /// A signer's key is not usable.
    #[error("signer {signer}'s key {reason}")]
    SignerKey {
        /// The signer's id, as the document has it.
        signer: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule names an action that does not exist.
    #[error("{0}")]
    Action(UnknownAction),
    /// `expires_at` is not a time.
    #[error("expires_at is not RFC 3339 ({0})")]
    ExpiresAt(String),
    /// Not the canonical form its digest was taken of.
    #[error("the policy document is not in canonical form (RFC 8785); use it exactly as Terraform shows it")]
    NotCanonical,
    /// Two signers hold one key.
    #[error("two signers of the policy document share a key")]
    SharedKey,
    /// A rule that no set of signers can meet.
    #[error("the rule for {action} needs {threshold} of {eligible} eligible signers, which no valid policy has")]
    Unsatisfiable {
        /// The rule's action.
        action: Action,
        /// Its threshold.
        threshold: u32,
        /// Signers holding its roles.
        eligible: usize,
    },
}

/// A policy as the user wrote it, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySpec {
    /// The policy's name.
    pub name: String,
    /// The signers, in the order written.
    pub signers: Vec<SignerSpec>,
    /// The rules, in the order written.
    pub rules: Vec<RuleSpec>,
    /// When the policy stops authorising changes (RFC 3339), if ever.
    pub expires_at: Option<String>,
}

/// One `signer` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignerSpec {
    /// Unique id, named in approvals.
    pub id: String,
    /// Role, matched by rules.
    pub role: String,
    /// PEM public key; exactly one of this and `kms_key_id`.
    pub public_key_pem: Option<String>,
    /// AWS KMS key whose public half is the signer's key.
    pub kms_key_id: Option<String>,
}

/// One `rule` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSpec {
    /// The governed action's name.
    pub action: String,
    /// How many distinct eligible signers must approve.
    pub threshold: i64,
    /// Roles whose signers are eligible.
    pub roles: Vec<String>,
}

/// A problem with a policy, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where in the specification.
    pub field: FieldPath,
    /// What is wrong.
    pub kind: PolicyErrorKind,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.kind)
    }
}

impl std::error::Error for PolicyError {}

/// What is wrong with a policy. Every message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyErrorKind {
    /// The name is empty.
    #[error("the policy name is empty; give the policy a name")]
    EmptyName,
    /// No signer blocks.
    #[error("a policy needs at least one signer block")]
    NoSigners,
    /// No rule blocks.
    #[error("a policy needs at least one rule block; a policy without rules would govern nothing")]
    NoRules,
    /// An empty id or role.
    #[error("{what} is empty; give every signer a non-empty {what}")]
    Empty {
        /// `id` or `role`.
        what: &'static str,
    },
    /// Two signers share an id.
    #[error("signer id {id:?} is used by two signer blocks; signer ids must be unique")]
    DuplicateSignerId {
        /// The repeated id.
        id: String,
    },
    /// Neither key source given.
    #[error("signer {id:?} has no key; set public_key_pem (or kms_key_id on the aws backend)")]
    NoKey {
        /// The signer.
        id: String,
    },
    /// Both key sources given.
    #[error("signer {id:?} sets both public_key_pem and kms_key_id; set exactly one")]
    TwoKeys {
        /// The signer.
        id: String,
    },
    /// The PEM is not a usable key.
    #[error("the public key of signer {id:?} {source}")]
    Key {
        /// The signer.
        id: String,
        /// What was wrong with the key.
        source: KeyError,
    },
    /// The KMS key could not be resolved.
    #[error("the KMS key of signer {id:?} could not be used: {reason}")]
    Kms {
        /// The signer.
        id: String,
        /// Why.
        reason: String,
    },
    /// Two signers hold the same key, which would let one holder count twice.
    #[error("signer {id:?} has the same public key as signer {other:?}; a key may belong to one signer only, or one holder would count twice")]
    DuplicateKey {
        /// The later signer.
        id: String,
        /// The earlier signer with the same key.
        other: String,
    },
    /// The action is not a governed action.
    #[error(transparent)]
    UnknownAction(#[from] UnknownAction),
    /// Two rules for one action.
    #[error("there are two rule blocks for {action}; merge them into one rule per action")]
    DuplicateRule {
        /// The action.
        action: Action,
    },
    /// A rule without roles.
    #[error("roles is empty; list the roles whose signers may approve this action")]
    NoRoles,
    /// A rule names a role no signer has.
    #[error("no signer has role {role:?}; the roles signers have are: {known}")]
    UnknownRole {
        /// The role named.
        role: String,
        /// The roles that exist, comma-separated.
        known: String,
    },
    /// Threshold outside 1..=eligible signers.
    #[error("threshold {threshold} for {action} is out of range: {eligible} signer(s) hold the roles it names, so the threshold must be between 1 and {eligible}")]
    Threshold {
        /// The action.
        action: String,
        /// The threshold given.
        threshold: i64,
        /// How many signers are eligible.
        eligible: usize,
    },
    /// `expires_at` is not RFC 3339.
    #[error("{given:?} is not an RFC 3339 time ({reason}); write it like 2027-06-30T00:00:00Z")]
    Expiry {
        /// The text given.
        given: String,
        /// What the parser said.
        reason: String,
    },
}

/// A signer of a validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// Unique id.
    pub id: String,
    /// Role.
    pub role: String,
    /// Public key (for a KMS signer, the key's public half).
    pub key: PublicKey,
    /// The KMS key id, for a KMS signer.
    pub kms_key_id: Option<String>,
}

/// A rule of a validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The governed action.
    pub action: Action,
    /// Distinct eligible signers needed.
    pub threshold: u32,
    /// Eligible roles.
    pub roles: BTreeSet<String>,
}

/// A validated policy at a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    version: u64,
    signers: BTreeMap<String, Signer>,
    rules: BTreeMap<Action, Rule>,
    expires_at: Option<OffsetDateTime>,
}

/// Resolves a KMS key id to its public key; backends without KMS answer with a reason.
pub type KmsResolver<'a> = &'a dyn Fn(&str) -> Result<PublicKey, String>;

impl Policy {
    /// Validates `spec` as a whole; every problem found is returned, each at its field.
    ///
    /// # Errors
    /// Every [`PolicyError`] in the specification.
    pub fn from_spec(spec: &PolicySpec, version: u64, resolve_kms: KmsResolver<'_>) -> Result<Self, Vec<PolicyError>> {
        let mut errors = Vec::new();
        if spec.name.trim().is_empty() {
            errors.push(err(FieldPath::attr("name"), PolicyErrorKind::EmptyName));
        }
        if spec.signers.is_empty() {
            errors.push(err(FieldPath::attr("signer"), PolicyErrorKind::NoSigners));
        }
        if spec.rules.is_empty() {
            errors.push(err(FieldPath::attr("rule"), PolicyErrorKind::NoRules));
        }
        let signers = check_signers(&spec.signers, resolve_kms, &mut errors);
        let rules = check_rules(&spec.rules, &spec.signers, &mut errors);
        let expires_at = spec.expires_at.as_deref().and_then(|given| {
            OffsetDateTime::parse(given, &Rfc3339)
                .map_err(|e| {
                    errors.push(err(
                        FieldPath::attr("expires_at"),
                        PolicyErrorKind::Expiry {
                            given: given.to_owned(),
                            reason: e.to_string(),
                        },
                    ));
                })
                .ok()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            name: spec.name.clone(),
            version,
            signers,
            rules,
            expires_at,
        })
    }

    /// The policy's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy's version.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The same policy at another version.
    #[must_use]
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// The signers, by id.
    #[must_use]
    pub fn signers(&self) -> &BTreeMap<String, Signer> {
        &self.signers
    }

    /// The rule for `action`, if the policy has one.
    #[must_use]
    pub fn rule(&self, action: Action) -> Option<&Rule> {
        self.rules.get(&action)
    }

    /// When the policy expires, if it does.
    #[must_use]
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }

    /// The policy document as canonical JSON (RFC 8785).
    #[must_use]
    pub fn document(&self) -> String {
        let signers: Vec<Value> = self
            .signers
            .values()
            .map(|s| {
                let mut key = json!({
                    "algorithm": s.key.algorithm().as_str(),
                    "spki": s.key.spki_base64(),
                });
                if let Some(kms) = &s.kms_key_id {
                    key["kms_key_id"] = json!(kms);
                }
                json!({"id": s.id, "role": s.role, "key": key})
            })
            .collect();
        let rules: Vec<Value> = self
            .rules
            .values()
            .map(|r| json!({"action": r.action.as_str(), "threshold": r.threshold, "roles": r.roles}))
            .collect();
        let expires_at = self.expires_at.map(|t| {
            t.to_offset(time::UtcOffset::UTC)
                .format(&Rfc3339)
                .unwrap_or_else(|_| t.unix_timestamp().to_string())
        });
        let document = json!({
            "schema": POLICY_SCHEMA,
            "name": self.name,
            "version": self.version,
            "signers": signers,
            "rules": rules,
            "expires_at": expires_at,
        });
        // Only strings and small integers: canonicalisation cannot fail.
        to_canonical_json(&document).unwrap_or_default()
    }

    /// Reads a policy document back (as `document` shows it), checking that it is canonical
    /// so that its digest is the one approvals refer to.
    ///
    /// # Errors
    /// A [`DocumentError`] naming what is wrong with the document.
    pub fn from_document(text: &str) -> Result<Self, DocumentError> {
        use DocumentError as E;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let doc: Value = serde_json::from_str(text).map_err(|e| E::NotJson(e.to_string()))?;
        if doc["schema"] != POLICY_SCHEMA {
            return Err(E::Schema(doc["schema"].to_string()));
        }
        let field = |v: &Value, name: &'static str| v[name].as_str().map(str::to_owned).ok_or(E::Missing(name));
        let mut signers = BTreeMap::new();
        for s in doc["signers"].as_array().ok_or(E::Missing("signers"))? {
            let key_of = |reason: String| E::SignerKey {
                signer: s["id"].to_string(),
                reason,
            };
            let spki = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, field(&s["key"], "spki")?)
                .map_err(|e| key_of(format!("is not base64 ({e})")))?;
            let key = PublicKey::from_spki_der(&spki).map_err(|e| key_of(e.to_string()))?;
            if s["key"]["algorithm"] != key.algorithm().as_str() {
                return Err(key_of("algorithm does not match its key".into()));
            }
            let signer = Signer {
                id: field(s, "id")?,
                role: field(s, "role")?,
                key,
                kms_key_id: s["key"]["kms_key_id"].as_str().map(str::to_owned),
            };
            signers.insert(signer.id.clone(), signer);
        }
        let mut rules = BTreeMap::new();
        for r in doc["rules"].as_array().ok_or(E::Missing("rules"))? {
            let action: Action = field(r, "action")?.parse().map_err(E::Action)?;
            let threshold = r["threshold"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or(E::Missing("threshold"))?;
            let roles = r["roles"]
                .as_array()
                .ok_or(E::Missing("roles"))?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            rules.insert(
                action,
                Rule {
                    action,
                    threshold,
                    roles,
                },
            );
        }
        let expires_at = match &doc["expires_at"] {
            Value::Null => None,
            v => Some(
                OffsetDateTime::parse(v.as_str().unwrap_or_default(), &Rfc3339)
                    .map_err(|e| E::ExpiresAt(e.to_string()))?,
            ),
        };
        let policy = Self {
            name: field(&doc, "name")?,
            version: doc["version"].as_u64().ok_or(E::Missing("version"))?,
            signers,
            rules,
            expires_at,
        };
        if policy.document() != text {
            return Err(E::NotCanonical);
        }
        policy.check_rules()?;
        Ok(policy)
    }

    /// The rules a valid policy keeps, checked again on a document read back (a stored or
    /// logged document is not trusted to have come from [`Self::from_spec`]).
    fn check_rules(&self) -> Result<(), DocumentError> {
        let keys: BTreeSet<&[u8]> = self.signers.values().map(|s| s.key.spki_der()).collect();
        if keys.len() != self.signers.len() {
            return Err(DocumentError::SharedKey);
        }
        for rule in self.rules.values() {
            let eligible = self.signers.values().filter(|s| rule.roles.contains(&s.role)).count();
            if rule.roles.is_empty() || rule.threshold < 1 || rule.threshold as usize > eligible {
                return Err(DocumentError::Unsatisfiable {
                    action: rule.action,
                    threshold: rule.threshold,
                    eligible,
                });
            }
        }
        Ok(())
    }

    /// Whether the policy has expired at `now`.
    #[must_use]
    pub fn expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// `sha256:<hex>` of [`Self::document`].
    #[must_use]
    pub fn digest(&self) -> String {
        sha256_tagged(self.document().as_bytes())
    }
}

fn err(field: FieldPath, kind: PolicyErrorKind) -> PolicyError {
    PolicyError { field, kind }
}

fn check_signers(
    specs: &[SignerSpec],
    resolve_kms: KmsResolver<'_>,
    errors: &mut Vec<PolicyError>,
) -> BTreeMap<String, Signer> {
    let mut signers: BTreeMap<String, Signer> = BTreeMap::new();
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    for (index, spec) in specs.iter().enumerate() {
        let at = |attr: &str| FieldPath::attr("signer").index(index).name(attr);
        let mut ok = true;
        for (what, value) in [("id", &spec.id), ("role", &spec.role)] {
            if value.trim().is_empty() {
                errors.push(err(at(what), PolicyErrorKind::Empty { what }));
                ok = false;
            }
        }
        if !ids.insert(&spec.id) {
            errors.push(err(
                at("id"),
                PolicyErrorKind::DuplicateSignerId { id: spec.id.clone() },
            ));
            ok = false;
        }
        let id = spec.id.clone();
        let key = match (&spec.public_key_pem, &spec.kms_key_id) {
            (None, None) => Err(err(at("public_key_pem"), PolicyErrorKind::NoKey { id })),
            (Some(_), Some(_)) => Err(err(at("kms_key_id"), PolicyErrorKind::TwoKeys { id })),
            (Some(pem), None) => PublicKey::from_pem(pem)
                .map_err(|source| err(at("public_key_pem"), PolicyErrorKind::Key { id, source })),
            (None, Some(kms)) => {
                resolve_kms(kms).map_err(|reason| err(at("kms_key_id"), PolicyErrorKind::Kms { id, reason }))
            }
        };
        let key = match key {
            Ok(key) => key,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Some(other) = signers.values().find(|s| s.key == key) {
            errors.push(err(
                at(if spec.kms_key_id.is_some() {
                    "kms_key_id"
                } else {
                    "public_key_pem"
                }),
                PolicyErrorKind::DuplicateKey {
                    id: spec.id.clone(),
                    other: other.id.clone(),
                },
            ));
            ok = false;
        }
        if ok {
            signers.insert(
                spec.id.clone(),
                Signer {
                    id: spec.id.clone(),
                    role: spec.role.clone(),
                    key,
                    kms_key_id: spec.kms_key_id.clone(),
                },
            );
        }
    }
    signers
}

fn check_rules(specs: &[RuleSpec], signers: &[SignerSpec], errors: &mut Vec<PolicyError>) -> BTreeMap<Action, Rule> {
    let known_roles: BTreeSet<&str> = signers.iter().map(|s| s.role.as_str()).collect();
    let mut rules = BTreeMap::new();
    let mut actions = BTreeSet::new();
    for (index, spec) in specs.iter().enumerate() {
        let at = |attr: &str| FieldPath::attr("rule").index(index).name(attr);
        let action = match spec.action.parse::<Action>() {
            Ok(action) => Some(action),
            Err(e) => {
                errors.push(err(at("action"), e.into()));
                None
            }
        };
        if let Some(action) = action {
            if !actions.insert(action) {
                errors.push(err(at("action"), PolicyErrorKind::DuplicateRule { action }));
            }
        }
        if spec.roles.is_empty() {
            errors.push(err(at("roles"), PolicyErrorKind::NoRoles));
        }
        let mut roles_ok = !spec.roles.is_empty();
        for (role_index, role) in spec.roles.iter().enumerate() {
            if !known_roles.contains(role.as_str()) {
                errors.push(err(
                    at("roles").index(role_index),
                    PolicyErrorKind::UnknownRole {
                        role: role.clone(),
                        known: known_roles.iter().copied().collect::<Vec<_>>().join(", "),
                    },
                ));
                roles_ok = false;
            }
        }
        let roles: BTreeSet<String> = spec.roles.iter().cloned().collect();
        let eligible = signers.iter().filter(|s| roles.contains(&s.role)).count();
        let threshold = u32::try_from(spec.threshold)
            .ok()
            .filter(|t| *t >= 1 && (*t as usize) <= eligible);
        if roles_ok && threshold.is_none() {
            errors.push(err(
                at("threshold"),
                PolicyErrorKind::Threshold {
                    action: spec.action.clone(),
                    threshold: spec.threshold,
                    eligible,
                },
            ));
        }
        if let (Some(action), Some(threshold)) = (action, threshold) {
            rules.entry(action).or_insert(Rule {
                action,
                threshold,
                roles,
            });
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::govern::keys::tests::{ed25519_pem, p256_pem, p384_pem};

    fn no_kms(_: &str) -> Result<PublicKey, String> {
        Err("the local backend has no KMS".into())
    }

    fn signer(id: &str, role: &str, pem: String) -> SignerSpec {
        SignerSpec {
            id: id.into(),
            role: role.into(),
            public_key_pem: Some(pem),
            kms_key_id: None,
        }
    }

    fn rule(action: &str, threshold: i64, roles: &[&str]) -> RuleSpec {
        RuleSpec {
            action: action.into(),
            threshold,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn two_of_three() -> PolicySpec {
        PolicySpec {
            name: "customer-data".into(),
            signers: vec![
                signer("auditor-a", "auditor", ed25519_pem(1)),
                signer("auditor-b", "auditor", p256_pem(2)),
                signer("auditor-c", "auditor", p384_pem(3)),
            ],
            rules: vec![rule("enclave.deploy", 2, &["auditor"])],
            expires_at: None,
        }
    }

    fn errors_of(spec: &PolicySpec) -> Vec<(String, PolicyErrorKind)> {
        Policy::from_spec(spec, 1, &no_kms)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field.to_string(), e.kind))
            .collect()
    }

    #[test]
    fn document_is_canonical_and_independent_of_block_order() {
        let spec = two_of_three();
        let policy = Policy::from_spec(&spec, 1, &no_kms).unwrap();
        let mut reordered = spec.clone();
        reordered.signers.reverse();
        let again = Policy::from_spec(&reordered, 1, &no_kms).unwrap();
        assert_eq!(policy.document(), again.document());
        assert_eq!(policy.digest(), again.digest());
        let document: Value = serde_json::from_str(&policy.document()).unwrap();
        assert_eq!(to_canonical_json(&document).unwrap(), policy.document());
        assert_eq!(document["signers"][1]["key"]["algorithm"], "ecdsa-p256");
        assert_eq!(document["rules"][0]["threshold"], 2);
        assert!(policy.digest().starts_with("sha256:"));
    }

    #[test]
    fn documents_read_back_to_the_same_policy() {
        let mut spec = two_of_three();
        spec.expires_at = Some("2030-01-01T00:00:00Z".into());
        let policy = Policy::from_spec(&spec, 3, &no_kms).unwrap();
        let again = Policy::from_document(&policy.document()).unwrap();
        assert_eq!(again, policy);
        let reformatted =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&policy.document()).unwrap()).unwrap();
        assert_eq!(Policy::from_document(&reformatted), Err(DocumentError::NotCanonical));
        let zero = policy.document().replace("\"threshold\":2", "\"threshold\":0");
        let err = Policy::from_document(&zero).unwrap_err();
        assert!(
            matches!(err, DocumentError::Unsatisfiable { threshold: 0, .. }),
            "a threshold of 0 is never valid: {err}"
        );
    }

    #[test]
    fn version_is_part_of_the_digest() {
        let policy = Policy::from_spec(&two_of_three(), 1, &no_kms).unwrap();
        assert_ne!(policy.digest(), policy.clone().with_version(2).digest());
    }

    #[test]
    fn threshold_must_be_between_one_and_the_eligible_signers() {
        for bad in [0, 4, -1] {
            let mut spec = two_of_three();
            spec.rules[0].threshold = bad;
            let errors = errors_of(&spec);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].0, "rule[0].threshold");
            assert!(errors[0].1.to_string().contains("between 1 and 3"), "{}", errors[0].1);
        }
    }

    #[test]
    fn eligibility_counts_only_the_named_roles() {
        let mut spec = two_of_three();
        spec.signers[2].role = "operator".into();
        spec.rules[0].threshold = 3;
        let errors = errors_of(&spec);
        assert!(errors[0].1.to_string().contains("2 signer(s)"), "{errors:?}");
    }

    #[test]
    fn reports_every_problem_at_its_field() {
        let mut spec = two_of_three();
        spec.signers[1].id = "auditor-a".into();
        spec.signers[2].public_key_pem = Some("not a key".into());
        spec.rules.push(rule("enclave.deploy", 1, &["auditor"]));
        spec.rules.push(rule("image.pubish", 1, &["reviewer"]));
        spec.expires_at = Some("next tuesday".into());
        let errors = errors_of(&spec);
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "signer[1].id",
                "signer[2].public_key_pem",
                "rule[1].action",
                "rule[2].action",
                "rule[2].roles[0]",
                "expires_at"
            ]
        );
        assert!(matches!(errors[0].1, PolicyErrorKind::DuplicateSignerId { .. }));
        assert!(errors[3].1.to_string().contains("image.publish"));
        assert!(errors[4].1.to_string().contains("the roles signers have are: auditor"));
    }

    #[test]
    fn a_key_belongs_to_one_signer() {
        let mut spec = two_of_three();
        spec.signers[1].public_key_pem = spec.signers[0].public_key_pem.clone();
        let errors = errors_of(&spec);
        assert_eq!(errors[0].0, "signer[1].public_key_pem");
        assert!(matches!(errors[0].1, PolicyErrorKind::DuplicateKey { .. }));
    }

    #[test]
    fn one_key_in_another_encoding_is_still_one_signer() {
        use crate::govern::keys::tests::{ed25519_spki_with_params, p256_spki_compressed};
        let pem = |der: &[u8]| pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, der).unwrap();
        // A P-256 key given again with its point compressed is the same signer's key.
        let mut spec = two_of_three();
        spec.signers[2].public_key_pem = Some(pem(&p256_spki_compressed(2)));
        let errors = errors_of(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "signer[2].public_key_pem");
        assert!(
            matches!(errors[0].1, PolicyErrorKind::DuplicateKey { .. }),
            "{errors:?}"
        );
        // An Ed25519 key with NULL parameters is refused outright (RFC 8410), so one key can
        // never meet a 2-of-N rule as two signers.
        let mut spec = two_of_three();
        spec.signers[2].public_key_pem = Some(pem(&ed25519_spki_with_params(1, &[0x05, 0x00])));
        let errors = errors_of(&spec);
        assert_eq!(errors[0].0, "signer[2].public_key_pem");
        assert!(matches!(errors[0].1, PolicyErrorKind::Key { .. }), "{errors:?}");
    }

    #[test]
    fn key_sources_are_exactly_one() {
        let mut spec = two_of_three();
        spec.signers[0].public_key_pem = None;
        spec.signers[1].kms_key_id = Some("alias/auditor".into());
        let errors = errors_of(&spec);
        assert_eq!(errors[0].0, "signer[0].public_key_pem");
        assert!(matches!(errors[0].1, PolicyErrorKind::NoKey { .. }));
        assert_eq!(errors[1].0, "signer[1].kms_key_id");
        assert!(matches!(errors[1].1, PolicyErrorKind::TwoKeys { .. }));
    }

    #[test]
    fn expiry_is_normalised_to_utc() {
        let mut spec = two_of_three();
        spec.expires_at = Some("2027-06-30T02:00:00+02:00".into());
        let policy = Policy::from_spec(&spec, 1, &no_kms).unwrap();
        assert!(policy.document().contains("\"expires_at\":\"2027-06-30T00:00:00Z\""));
    }
}
