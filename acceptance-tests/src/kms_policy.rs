//! A small evaluator of AWS KMS key policies, for asserting what a sealed key's policy allows
//! rather than which strings it contains (a `kms:*` grant contains no `kms:PutKeyPolicy`).
//!
//! It follows the IAM policy evaluation logic (IAM User Guide, "Policy evaluation logic" and
//! "IAM JSON policy elements"), restricted to what a key policy needs:
//! - an explicit `Deny` whose principal, action and conditions match wins over any `Allow`;
//!   otherwise a matching `Allow` allows; otherwise the request is implicitly denied;
//! - actions match case-insensitively with the `*` and `?` wildcards (`kms:*`, `kms:Get*`),
//!   and `NotAction` matches every action it does not list;
//! - a principal `"*"` (or `{"AWS": "*"}`) is everyone; `arn:aws:iam::ACCOUNT:root` or a bare
//!   account id is every principal of that account (KMS Developer Guide, "Allows access to
//!   the AWS account and enables IAM policies"); any other ARN is that principal only;
//! - conditions: every operator of a statement and every key of an operator must hold (AND),
//!   any one value of a key suffices (OR). `StringEquals`, `StringEqualsIgnoreCase`,
//!   `StringNotEquals`, `StringNotEqualsIgnoreCase`, `StringLike`, `Bool` and `Null` are
//!   understood; condition keys are case-insensitive, as in IAM.
//!
//! Anything else (`NotPrincipal`, `NotResource`, set operators such as `ForAnyValue:`,
//! `...IfExists`, other operators) is refused at parse time: a checker that guesses would
//! pass the policies it was written to catch.
//!
//! [`check_sealed_key_policy`] uses it to hold a sealed key's policy to its contract
//! (`safebox::sealed_key`), statement by statement and then by evaluating every request that
//! matters.

use std::collections::BTreeMap;

use serde_json::Value;

/// Every KMS API action (AWS KMS API Reference, "Actions"), plus one that does not exist yet:
/// a wildcard grant is caught even for actions KMS adds later.
pub const KMS_ACTIONS: [&str; 56] = [
    "kms:CancelKeyDeletion",
    "kms:ConnectCustomKeyStore",
    "kms:CreateAlias",
    "kms:CreateCustomKeyStore",
    "kms:CreateGrant",
    "kms:CreateKey",
    "kms:Decrypt",
    "kms:DeleteAlias",
    "kms:DeleteCustomKeyStore",
    "kms:DeleteImportedKeyMaterial",
    "kms:DeriveSharedSecret",
    "kms:DescribeCustomKeyStores",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:DisconnectCustomKeyStore",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateMac",
    "kms:GenerateRandom",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:GetParametersForImport",
    "kms:GetPublicKey",
    "kms:ImportKeyMaterial",
    "kms:ListAliases",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListKeys",
    "kms:ListResourceTags",
    "kms:ListRetirableGrants",
    "kms:PutKeyPolicy",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:ReplicateKey",
    "kms:RetireGrant",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:Sign",
    "kms:SynchronizeMultiRegionKey",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateCustomKeyStore",
    "kms:UpdateKeyDescription",
    "kms:UpdatePrimaryRegion",
    "kms:Verify",
    "kms:VerifyMac",
    "kms:SomeActionAddedLater",
];

/// What a sealed key's administrators may do, and nothing more: look, tag, switch off, delete
/// (the contract in `safebox::sealed_key`'s docs, restated here so that changing the list in
/// the code needs a change to the test too).
pub const ADMINISTRATOR_ACTIONS: [&str; 11] = [
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

/// What only an attested recipient may do, and only under the attestation conditions.
pub const ATTESTED_ACTIONS: [&str; 3] = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DeriveSharedSecret"];

/// Operations that release plaintext or pass the key on: administrators are explicitly
/// denied all of them without an attestation.
pub const PLAINTEXT_ACTIONS: [&str; 7] = [
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:DeriveSharedSecret",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:CreateGrant",
];

const OPERATORS: [&str; 7] = [
    "StringEquals",
    "StringEqualsIgnoreCase",
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "Bool",
    "Null",
];

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants, unless a deny matches.
    Allow,
    /// Refuses, whatever allows.
    Deny,
}

/// A statement's conditions: operator, then condition key (lower case), then the values any
/// one of which satisfies the key.
pub type Conditions = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The request context a condition is evaluated against: condition key to value. Keys are
/// matched case-insensitively; a key that is absent is absent (see the `Null` operator).
pub type Context = BTreeMap<String, String>;

/// One statement of a key policy.
#[derive(Debug, Clone)]
pub struct Statement {
    /// Its `Sid`, or `#<index>` when it has none.
    pub sid: String,
    /// Its effect.
    pub effect: Effect,
    /// `None` for everyone (`"*"`), else the principals as written (ARNs or account ids).
    pub principals: Option<Vec<String>>,
    /// The action patterns of `Action`, or of `NotAction` when `not_action` is set.
    pub actions: Vec<String>,
    /// Whether the patterns are a `NotAction`.
    pub not_action: bool,
    /// Its conditions.
    pub conditions: Conditions,
}

/// A parsed key policy.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// Its statements, in order.
    pub statements: Vec<Statement>,
}

/// How a request is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the statement with this Sid, and no deny matched.
    Allowed(String),
    /// Refused by the deny statement with this Sid.
    ExplicitDeny(String),
    /// No statement allows it.
    ImplicitDeny,
}

impl Decision {
    /// Whether the request is allowed.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed(_))
    }
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("{what}: {other} is not a string")),
    };
    match value {
        Value::Array(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

fn parse_principals(value: &Value, sid: &str) -> Result<Option<Vec<String>>, String> {
    if value == "*" {
        return Ok(None);
    }
    let Value::Object(kinds) = value else {
        return Err(format!("{sid}: Principal {value} is neither \"*\" nor an object"));
    };
    let mut principals = Vec::new();
    for (kind, entries) in kinds {
        if !matches!(kind.as_str(), "AWS" | "Service" | "Federated" | "CanonicalUser") {
            return Err(format!("{sid}: unknown principal type {kind:?}"));
        }
        for entry in strings(entries, sid)? {
            if entry == "*" {
                return Ok(None);
            }
            principals.push(entry);
        }
    }
    Ok(Some(principals))
}

fn parse_conditions(value: Option<&Value>, sid: &str) -> Result<Conditions, String> {
    let mut conditions = Conditions::new();
    let Some(value) = value else { return Ok(conditions) };
    let Value::Object(operators) = value else {
        return Err(format!("{sid}: Condition is not an object"));
    };
    for (operator, keys) in operators {
        if !OPERATORS.contains(&operator.as_str()) {
            return Err(format!(
                "{sid}: condition operator {operator:?} is not understood by this evaluator"
            ));
        }
        let Value::Object(keys) = keys else {
            return Err(format!("{sid}: {operator} is not an object"));
        };
        let entry = conditions.entry(operator.clone()).or_default();
        for (key, values) in keys {
            entry.insert(key.to_ascii_lowercase(), strings(values, sid)?);
        }
    }
    Ok(conditions)
}

impl KeyPolicy {
    /// Parses a key policy document.
    ///
    /// # Errors
    /// What is malformed or beyond this evaluator (which refuses rather than guesses).
    pub fn parse(document: &str) -> Result<Self, String> {
        let policy: Value = serde_json::from_str(document).map_err(|e| format!("not JSON: {e}"))?;
        let statements = match &policy["Statement"] {
            Value::Array(statements) => statements.clone(),
            Value::Object(_) => vec![policy["Statement"].clone()],
            other => return Err(format!("Statement is {other}, not a list")),
        };
        let mut parsed = Vec::new();
        for (index, statement) in statements.iter().enumerate() {
            let Value::Object(fields) = statement else {
                return Err(format!("statement {index} is not an object"));
            };
            let sid = fields
                .get("Sid")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{index}"), str::to_owned);
            for field in fields.keys() {
                if !matches!(
                    field.as_str(),
                    "Sid" | "Effect" | "Principal" | "Action" | "NotAction" | "Resource" | "Condition"
                ) {
                    return Err(format!("{sid}: {field} is not understood by this evaluator"));
                }
            }
            let effect = match fields.get("Effect").and_then(Value::as_str) {
                Some("Allow") => Effect::Allow,
                Some("Deny") => Effect::Deny,
                other => return Err(format!("{sid}: Effect is {other:?}")),
            };
            let principals = parse_principals(fields.get("Principal").ok_or(format!("{sid}: no Principal"))?, &sid)?;
            let (actions, not_action) = match (fields.get("Action"), fields.get("NotAction")) {
                (Some(actions), None) => (strings(actions, &sid)?, false),
                (None, Some(actions)) => (strings(actions, &sid)?, true),
                _ => return Err(format!("{sid}: needs exactly one of Action and NotAction")),
            };
            // In a key policy the resource is the key itself; anything else is a typo.
            if fields.get("Resource").and_then(Value::as_str) != Some("*") {
                return Err(format!("{sid}: Resource is {:?}, not \"*\"", fields.get("Resource")));
            }
            let conditions = parse_conditions(fields.get("Condition"), &sid)?;
            parsed.push(Statement {
                sid,
                effect,
                principals,
                actions,
                not_action,
                conditions,
            });
        }
        Ok(Self { statements: parsed })
    }

    /// The statements that apply to `principal` doing `action`, before their conditions.
    pub fn applicable<'a>(&'a self, principal: &'a str, action: &'a str) -> impl Iterator<Item = &'a Statement> {
        self.statements
            .iter()
            .filter(move |s| s.names(principal) && s.covers(action))
    }

    /// The conditions under which a statement allows `principal` to do `action`: one entry per
    /// allowing statement (an empty map is an unconditional grant). Deny statements are not
    /// subtracted; see [`Self::decide`].
    #[must_use]
    pub fn allowed_under(&self, principal: &str, action: &str) -> Vec<(&str, &Conditions)> {
        self.statements
            .iter()
            .filter(|s| s.effect == Effect::Allow && s.names(principal) && s.covers(action))
            .map(|s| (s.sid.as_str(), &s.conditions))
            .collect()
    }

    /// Decides `principal` doing `action` in `context`: an explicit deny wins, then any allow.
    #[must_use]
    pub fn decide(&self, principal: &str, action: &str, context: &Context) -> Decision {
        let holding: Vec<&Statement> = self
            .applicable(principal, action)
            .filter(|s| s.conditions_hold(context))
            .collect();
        if let Some(deny) = holding.iter().find(|s| s.effect == Effect::Deny) {
            return Decision::ExplicitDeny(deny.sid.clone());
        }
        holding
            .iter()
            .find(|s| s.effect == Effect::Allow)
            .map_or(Decision::ImplicitDeny, |s| Decision::Allowed(s.sid.clone()))
    }
}

/// Whether `pattern` (with `*` and `?`) matches `text`, case-insensitively.
#[must_use]
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    fn matches(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => matches(&p[1..], t) || (!t.is_empty() && matches(p, &t[1..])),
            (Some(b'?'), Some(_)) => matches(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => matches(&p[1..], &t[1..]),
            _ => false,
        }
    }
    matches(pattern.as_bytes(), text.as_bytes())
}

/// The account of an IAM principal ARN (`arn:PARTITION:iam::ACCOUNT:...`, or `sts`).
fn account(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "iam" | "sts", "", account, _] => Some(account),
        _ => None,
    }
}

/// Whether the policy principal `entry` names the requester `principal` (an ARN, or `"*"`
/// for an anonymous request).
#[must_use]
pub fn principal_matches(entry: &str, principal: &str) -> bool {
    if entry == "*" {
        return true;
    }
    let whole_account = if entry.len() == 12 && entry.bytes().all(|b| b.is_ascii_digit()) {
        Some(entry)
    } else if entry.ends_with(":root") {
        account(entry)
    } else {
        None
    };
    match whole_account {
        Some(acct) => account(principal) == Some(acct),
        None => entry == principal,
    }
}

impl Statement {
    /// Whether it names `principal`.
    #[must_use]
    pub fn names(&self, principal: &str) -> bool {
        self.principals
            .as_ref()
            .is_none_or(|list| list.iter().any(|entry| principal_matches(entry, principal)))
    }

    /// Whether it covers `action` (through `Action` or `NotAction`).
    #[must_use]
    pub fn covers(&self, action: &str) -> bool {
        self.actions.iter().any(|p| wildcard_match(p, action)) != self.not_action
    }

    /// Whether its conditions hold in `context`.
    #[must_use]
    pub fn conditions_hold(&self, context: &Context) -> bool {
        let lookup = |key: &str| {
            context
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        self.conditions.iter().all(|(operator, keys)| {
            keys.iter().all(|(key, values)| {
                let present = lookup(key);
                let any = |f: &dyn Fn(&str, &str) -> bool| present.is_some_and(|v| values.iter().any(|x| f(x, v)));
                match operator.as_str() {
                    "StringEquals" | "Bool" => any(&|x, v| x == v),
                    "StringEqualsIgnoreCase" => any(&|x, v| x.eq_ignore_ascii_case(v)),
                    // IAM: a negated operator holds when the key is absent.
                    "StringNotEquals" => !any(&|x, v| x == v),
                    "StringNotEqualsIgnoreCase" => !any(&|x, v| x.eq_ignore_ascii_case(v)),
                    "StringLike" => any(&|x, v| wildcard_match(x, v)),
                    "Null" => values.iter().any(|x| (x == "true") == present.is_none()),
                    _ => false,
                }
            })
        })
    }
}

/// What a sealed key's policy must say.
#[derive(Debug, Clone)]
pub struct SealedKeyExpectation {
    /// The principals whose attested enclaves may use the key (ARNs; `...:root` is an account).
    pub recipients: Vec<String>,
    /// The principals that administer the key.
    pub administrators: Vec<String>,
    /// The attestation the recipient's document must carry: condition key (such as
    /// `kms:RecipientAttestation:ImageSha384`) to value (hex).
    pub attestation: BTreeMap<String, String>,
}

/// A principal in the same account as `arn` that the policy names nowhere.
fn another_in_account(arn: &str) -> Option<String> {
    account(arn).map(|acct| format!("arn:aws:iam::{acct}:role/safebox-probe-someone-else"))
}

/// Checks `document` against `expected`, first statement by statement, then by deciding every
/// KMS action ([`KMS_ACTIONS`]) for the recipients, the administrators, others in their
/// accounts, an outsider and an anonymous caller, with no attestation, with the right one
/// (also in upper case), and with each measurement wrong or missing in turn.
///
/// # Errors
/// Every violation found, one sentence each.
pub fn check_sealed_key_policy(document: &str, expected: &SealedKeyExpectation) -> Result<(), Vec<String>> {
    let policy = KeyPolicy::parse(document).map_err(|e| vec![format!("the policy cannot be evaluated: {e}")])?;
    let mut problems = statement_problems(&policy, expected);
    problems.extend(decision_problems(&policy, expected));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The attestation as conditions: one operator, the expected keys, one value each.
fn attestation_conditions(conditions: &Conditions, expected: &SealedKeyExpectation) -> bool {
    let wanted: BTreeMap<String, String> = expected
        .attestation
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_ascii_lowercase()))
        .collect();
    let [(operator, keys)] = conditions.iter().collect::<Vec<_>>()[..] else {
        return false;
    };
    matches!(operator.as_str(), "StringEquals" | "StringEqualsIgnoreCase")
        && keys.len() == wanted.len()
        && keys
            .iter()
            .all(|(key, values)| matches!(&values[..], [value] if wanted.get(key) == Some(&value.to_ascii_lowercase())))
}

/// Whom a statement names, for messages.
fn named(s: &Statement) -> String {
    s.principals
        .as_ref()
        .map_or_else(|| "everyone".to_owned(), |names| format!("{names:?}"))
}

fn statement_problems(policy: &KeyPolicy, expected: &SealedKeyExpectation) -> Vec<String> {
    let mut problems = Vec::new();
    for s in policy.statements.iter().filter(|s| s.effect == Effect::Allow) {
        let sid = &s.sid;
        let only = |list: &[String]| {
            s.principals
                .as_ref()
                .is_some_and(|names| !names.is_empty() && names.iter().all(|n| list.contains(n)))
        };
        let (attested, other): (Vec<&str>, Vec<&str>) = KMS_ACTIONS
            .into_iter()
            .filter(|a| s.covers(a))
            .partition(|a| ATTESTED_ACTIONS.contains(a));
        if !attested.is_empty() {
            if !only(&expected.recipients) {
                problems.push(format!(
                    "{sid} grants {attested:?} to {}, not only to the recipients {:?}",
                    named(s),
                    expected.recipients
                ));
            }
            if !attestation_conditions(&s.conditions, expected) {
                problems.push(format!(
                    "{sid} grants {attested:?} under {:?}, not exactly under the attestation {:?}",
                    s.conditions, expected.attestation
                ));
            }
        }
        if !other.is_empty() {
            let beyond: Vec<&&str> = other.iter().filter(|a| !ADMINISTRATOR_ACTIONS.contains(a)).collect();
            if !beyond.is_empty() {
                problems.push(format!(
                    "{sid} grants actions beyond the administrative ones: {beyond:?}"
                ));
            }
            if !only(&expected.administrators) {
                problems.push(format!(
                    "{sid} grants {other:?} to {}, not only to the administrators {:?}",
                    named(s),
                    expected.administrators
                ));
            }
            if !s.conditions.is_empty() {
                problems.push(format!("{sid} makes administration conditional: {:?}", s.conditions));
            }
        }
    }
    // A deny can only take away; what it must take away is checked by decision.
    problems
}

fn decision_problems(policy: &KeyPolicy, expected: &SealedKeyExpectation) -> Vec<String> {
    let attested: Context = expected.attestation.clone();
    let mut contexts: Vec<(String, Context, bool)> = vec![
        ("no attestation".to_owned(), Context::new(), false),
        ("the attestation".to_owned(), attested.clone(), true),
        (
            "the attestation in upper case".to_owned(),
            attested
                .iter()
                .map(|(k, v)| (k.clone(), v.to_ascii_uppercase()))
                .collect(),
            true,
        ),
    ];
    for key in attested.keys() {
        // Another measurement: the attested one with its first digit changed (a fixed value
        // such as all zeros would be right for a PCR that nothing extends, like PCR12's).
        let mut wrong = attested.clone();
        let other = attested[key]
            .char_indices()
            .map(|(i, c)| {
                if i == 0 {
                    if c == '0' {
                        '1'
                    } else {
                        '0'
                    }
                } else {
                    c
                }
            })
            .collect();
        wrong.insert(key.clone(), other);
        contexts.push((format!("a wrong {key}"), wrong, false));
        let mut missing = attested.clone();
        missing.remove(key);
        contexts.push((format!("no {key}"), missing, false));
    }

    let mut probes: Vec<String> = expected.recipients.clone();
    probes.extend(expected.administrators.iter().cloned());
    probes.extend(
        expected
            .recipients
            .iter()
            .chain(&expected.administrators)
            .filter_map(|arn| another_in_account(arn)),
    );
    probes.extend([
        "arn:aws:iam::999999999999:root".to_owned(),
        "arn:aws:iam::999999999999:role/Outsider".to_owned(),
        "*".to_owned(),
    ]);
    probes.sort();
    probes.dedup();

    let recipient = |who: &str| expected.recipients.iter().any(|r| principal_matches(r, who));
    let administrator = |who: &str| expected.administrators.iter().any(|a| a == who);
    let mut problems = Vec::new();
    for who in &probes {
        for (described, context, is_attested) in &contexts {
            for action in KMS_ACTIONS {
                let want = (ATTESTED_ACTIONS.contains(&action) && *is_attested && recipient(who))
                    || (ADMINISTRATOR_ACTIONS.contains(&action) && administrator(who));
                let got = policy.decide(who, action, context);
                if got.is_allowed() != want {
                    problems.push(format!(
                        "{who} doing {action} with {described}: {got:?}, expected {}",
                        if want { "allowed" } else { "refused" }
                    ));
                }
            }
        }
        if administrator(who) {
            for action in PLAINTEXT_ACTIONS {
                let got = policy.decide(who, action, &Context::new());
                if !matches!(got, Decision::ExplicitDeny(_)) {
                    problems.push(format!(
                        "administrator {who} doing {action} without an attestation is {got:?}, not explicitly denied"
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use safebox::sealed_key::{default_recipients, KeyBinding, SealedKeySpec};
    use serde_json::json;

    use super::*;

    const ADMIN: &str = "arn:aws:iam::123456789012:role/KeyAdmin";

    fn spec() -> SealedKeySpec {
        SealedKeySpec {
            binding: KeyBinding::Enclave {
                image_sha384: "ab".repeat(48),
                pcrs: [(0, "ab".repeat(48)), (8, "cd".repeat(48))].into(),
            },
            administrator_arns: vec![ADMIN.into()],
            recipient_arns: default_recipients(&[ADMIN.into()]),
        }
    }

    fn expectation() -> SealedKeyExpectation {
        SealedKeyExpectation {
            recipients: vec!["arn:aws:iam::123456789012:root".into()],
            administrators: vec![ADMIN.into()],
            attestation: [
                ("kms:RecipientAttestation:ImageSha384".to_owned(), "ab".repeat(48)),
                ("kms:RecipientAttestation:PCR0".to_owned(), "ab".repeat(48)),
                ("kms:RecipientAttestation:PCR8".to_owned(), "cd".repeat(48)),
            ]
            .into(),
        }
    }

    /// The sealed policy with `edit` applied to its JSON.
    fn tampered(edit: impl FnOnce(&mut Value)) -> String {
        let mut policy: Value = serde_json::from_str(&spec().policy()).unwrap();
        edit(&mut policy);
        policy.to_string()
    }

    fn statement<'a>(policy: &'a mut Value, sid: &str) -> &'a mut Value {
        policy["Statement"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|s| s["Sid"] == sid)
            .unwrap()
    }

    #[track_caller]
    fn refused_for(document: &str, needle: &str) {
        let problems = check_sealed_key_policy(document, &expectation()).expect_err("the tampered policy passed");
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no problem mentions {needle:?}: {problems:#?}"
        );
    }

    #[test]
    fn wildcards_match_actions_and_accounts_as_iam_does() {
        assert!(wildcard_match("kms:*", "kms:PutKeyPolicy"));
        assert!(wildcard_match("KMS:put*", "kms:PutKeyPolicy"));
        assert!(wildcard_match("kms:Re?ncrypt*", "kms:ReEncryptFrom"));
        assert!(wildcard_match("*", "kms:Decrypt"));
        assert!(!wildcard_match("kms:Decrypt", "kms:DecryptSomething"));
        assert!(!wildcard_match("kms:Get*", "kms:PutKeyPolicy"));
        assert!(principal_matches("*", "*"));
        assert!(principal_matches("arn:aws:iam::123456789012:root", ADMIN));
        assert!(principal_matches("123456789012", ADMIN));
        assert!(!principal_matches(
            "arn:aws:iam::123456789012:root",
            "arn:aws:iam::999999999999:root"
        ));
        assert!(!principal_matches(ADMIN, "arn:aws:iam::123456789012:role/Other"));
        assert!(!principal_matches(ADMIN, "*"));
    }

    #[test]
    fn an_explicit_deny_wins_and_conditions_are_evaluated() {
        let policy = KeyPolicy::parse(
            &json!({"Statement": [
                {"Sid": "all", "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
                {"Sid": "no", "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*",
                 "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}},
            ]})
            .to_string(),
        )
        .unwrap();
        let none = Context::new();
        let attested: Context = [("KMS:RecipientAttestation:imagesha384".to_owned(), "x".to_owned())].into();
        assert_eq!(
            policy.decide(ADMIN, "kms:Decrypt", &none),
            Decision::ExplicitDeny("no".into())
        );
        assert_eq!(
            policy.decide(ADMIN, "kms:Decrypt", &attested),
            Decision::Allowed("all".into())
        );
        assert_eq!(
            policy.decide("*", "kms:PutKeyPolicy", &none),
            Decision::Allowed("all".into())
        );
        assert_eq!(policy.allowed_under(ADMIN, "kms:Decrypt").len(), 1);
    }

    #[test]
    fn constructs_it_does_not_understand_are_refused_not_guessed() {
        for statement in [
            json!({"Effect": "Allow", "NotPrincipal": {"AWS": ADMIN}, "Action": "kms:Decrypt", "Resource": "*"}),
            json!({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
                   "Condition": {"ForAnyValue:StringLike": {"kms:RecipientAttestation:PCR0": "*"}}}),
            json!({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
                   "Condition": {"StringEqualsIfExists": {"kms:RecipientAttestation:PCR0": "ab"}}}),
            json!({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "NotResource": "x"}),
            json!({"Effect": "Maybe", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}),
        ] {
            let document = json!({ "Statement": [statement] }).to_string();
            assert!(KeyPolicy::parse(&document).is_err(), "{document}");
            assert!(check_sealed_key_policy(&document, &expectation()).is_err());
        }
    }

    #[test]
    fn the_sealed_policy_holds_statement_by_statement_and_by_decision() {
        let document = spec().policy();
        check_sealed_key_policy(&document, &expectation()).unwrap_or_else(|p| panic!("{p:#?}"));
        let policy = KeyPolicy::parse(&document).unwrap();
        // Under which conditions: exactly the attestation, for the recipients' account only.
        let under = policy.allowed_under("arn:aws:iam::123456789012:role/App", "kms:Decrypt");
        assert_eq!(under.len(), 1, "{under:?}");
        assert!(attestation_conditions(under[0].1, &expectation()));
        assert!(policy
            .allowed_under("arn:aws:iam::999999999999:role/App", "kms:Decrypt")
            .is_empty());
        // The same policy does not hold for another image.
        let mut other = expectation();
        other
            .attestation
            .insert("kms:RecipientAttestation:ImageSha384".into(), "ef".repeat(48));
        assert!(check_sealed_key_policy(&document, &other).is_err());
    }

    #[test]
    fn a_kms_star_grant_to_administrators_is_caught_where_a_substring_test_was_not() {
        let document = tampered(|p| {
            statement(p, "AdministratorsManageButNeverDecrypt")["Action"]
                .as_array_mut()
                .unwrap()
                .push(json!("kms:*"));
        });
        // What the acceptance test used to check, which this policy passes:
        assert!(!document.contains("kms:PutKeyPolicy"));
        refused_for(&document, "kms:PutKeyPolicy");
        refused_for(&document, "grants actions beyond the administrative ones");
    }

    #[test]
    fn other_loosenings_are_caught_too() {
        // A prefix wildcard.
        refused_for(
            &tampered(|p| {
                statement(p, "AdministratorsManageButNeverDecrypt")["Action"] = json!(["kms:Describe*", "kms:Put*"]);
            }),
            "kms:PutKeyPolicy",
        );
        // NotAction: everything but decrypt.
        refused_for(
            &tampered(|p| {
                let admin = statement(p, "AdministratorsManageButNeverDecrypt");
                admin.as_object_mut().unwrap().remove("Action");
                admin["NotAction"] = json!("kms:Decrypt");
            }),
            "kms:CreateGrant",
        );
        // Anyone may decrypt, without an attestation.
        refused_for(
            &tampered(|p| {
                p["Statement"].as_array_mut().unwrap().push(
                    json!({"Sid": "Oops", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"}),
                );
            }),
            "Oops grants [\"kms:Decrypt\"] to everyone",
        );
        // Recipients widened to everyone.
        refused_for(
            &tampered(|p| statement(p, "AttestedEnclavesOnly")["Principal"] = json!("*")),
            "arn:aws:iam::999999999999:role/Outsider doing kms:Decrypt with the attestation",
        );
        // A measurement dropped from the binding.
        refused_for(
            &tampered(|p| {
                statement(p, "AttestedEnclavesOnly")["Condition"]["StringEqualsIgnoreCase"]
                    .as_object_mut()
                    .unwrap()
                    .remove("kms:RecipientAttestation:PCR8");
            }),
            "with no kms:RecipientAttestation:PCR8: Allowed",
        );
        // A measurement made a wildcard.
        refused_for(
            &tampered(|p| {
                let attested = statement(p, "AttestedEnclavesOnly");
                let conditions = attested["Condition"]["StringEqualsIgnoreCase"].clone();
                attested["Condition"] = json!({ "StringLike": conditions });
                attested["Condition"]["StringLike"]["kms:RecipientAttestation:PCR0"] = json!("*");
            }),
            "not exactly under the attestation",
        );
        // Recipients may also re-encrypt elsewhere.
        refused_for(
            &tampered(|p| {
                statement(p, "AttestedEnclavesOnly")["Action"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("kms:ReEncrypt*"));
            }),
            "grants actions beyond the administrative ones: [\"kms:ReEncryptFrom\"",
        );
        // The administrators' deny is gone.
        refused_for(
            &tampered(|p| {
                p["Statement"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|s| s["Sid"] != "NoPlaintextForAdministrators");
            }),
            "not explicitly denied",
        );
        // An administrator dropped: the key can no longer be deleted by them.
        refused_for(
            &tampered(|p| statement(p, "AdministratorsManageButNeverDecrypt")["Principal"]["AWS"] = json!([])),
            "doing kms:ScheduleKeyDeletion with no attestation: ImplicitDeny, expected allowed",
        );
    }
}
