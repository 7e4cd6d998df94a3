//! `safebox_policy`: an M-of-N governance policy.
//!
//! The canonical `document`, its `digest` and the `version` are computed at plan time, so
//! auditors see exactly what they will be asked to trust before anything is applied. The
//! version grows by one whenever the document's content changes.

use std::collections::HashMap;

use safebox::cloud::{new_record_id, RecordKind};
use safebox::govern::keys::PublicKey;
use safebox::govern::policy::{Policy, PolicyError, PolicyErrorKind, PolicySpec, RuleSpec, SignerSpec};
use safebox::govern::Action;

use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, NestedBlock, PlanModifier, Schema};
use crate::framework::types::Type;
use crate::framework::validators::{not_blank, one_of};
use crate::framework::value::Value;
use crate::governance::{self, Change};
use crate::resource::{Ctx, Resource};
use crate::resources::record;
use safebox::govern::approval::attributes_digest;

const ACTIONS: &[&str] = &["image.publish", "enclave.deploy", "link.create", "policy.update"];

/// The `safebox_policy` resource.
pub struct PolicyResource {
    schema: Schema,
}

impl Default for PolicyResource {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyResource {
    /// The resource with its schema.
    #[must_use]
    pub fn new() -> Self {
        debug_assert_eq!(ACTIONS.len(), Action::ALL.len());
        let signer = Block::new(vec![
            Attribute::required("id", Type::String)
                .describe("Unique signer id, named in approvals.")
                .validate(not_blank()),
            Attribute::required("role", Type::String)
                .describe("The signer's role; rules name roles.")
                .validate(not_blank()),
            Attribute::optional("public_key_pem", Type::String)
                .describe("The signer's public key: PEM `PUBLIC KEY`, ed25519, ECDSA P-256 or ECDSA P-384."),
            Attribute::optional("kms_key_id", Type::String)
                .describe("aws backend: an AWS KMS asymmetric key whose public half is the signer's key.")
                .validate(not_blank()),
        ]);
        let rule = Block::new(vec![
            Attribute::required("action", Type::String)
                .describe("The governed action: `image.publish`, `enclave.deploy`, `link.create` or `policy.update`.")
                .validate(one_of(ACTIONS)),
            Attribute::required("threshold", Type::Number)
                .describe("How many distinct eligible signers must approve; between 1 and the number of signers holding the named roles."),
            Attribute::required("roles", Type::list(Type::String)).describe("Roles whose signers may approve."),
        ]);
        let block = Block::new(vec![
            Attribute::computed("id", Type::String)
                .describe("The policy's id in the backend; import by it.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::required("name", Type::String)
                .describe("The policy's name. Changing it replaces the policy.")
                .validate(not_blank())
                .modify(PlanModifier::RequiresReplace),
            Attribute::optional("expires_at", Type::String)
                .describe("When the policy stops authorising changes (RFC 3339)."),
            Attribute::computed("version", Type::Number)
                .describe("Starts at 1 and grows by one with every change of the document."),
            Attribute::computed("digest", Type::String).describe("`sha256:<hex>` of `document`."),
            Attribute::computed("document", Type::String)
                .describe("The policy as canonical JSON (RFC 8785): what approvals and auditors refer to."),
        ]
        .into_iter()
        .chain(governance::attributes().into_iter().filter(|a| a.name != "policy_id"))
        .collect())
        .with_blocks(vec![
            NestedBlock::list("signer", signer, 1),
            NestedBlock::list("rule", rule, 1),
        ])
        .describe("An M-of-N governance policy: signers held by auditors the customer chooses, roles and per-action thresholds.");
        Self {
            schema: Schema { version: 0, block },
        }
    }

    /// Validates `value` into a policy at `version`, resolving KMS signers through the backend.
    async fn policy(&self, ctx: &Ctx, value: &Value, version: u64, diags: &mut Diagnostics) -> Option<Policy> {
        let spec = spec_of(value)?;
        let mut kms_keys: HashMap<String, Result<PublicKey, String>> = HashMap::new();
        for kms in spec.signers.iter().filter_map(|s| s.kms_key_id.clone()) {
            let key = ctx
                .configured
                .cloud
                .kms_public_key(&kms)
                .await
                .map_err(|e| e.to_string());
            kms_keys.insert(kms, key);
        }
        let resolve = |id: &str| kms_keys.get(id).cloned().unwrap_or_else(|| Err("not resolved".into()));
        match Policy::from_spec(&spec, version, &resolve) {
            Ok(policy) => Some(policy),
            Err(errors) => {
                report(&errors, diags);
                None
            }
        }
    }

    /// `base` with the computed attributes of `policy` and `id` filled in.
    fn state(base: &Value, id: &str, policy: &Policy) -> Value {
        let mut state = base.clone();
        state.set("id", Value::string(id));
        state.set(
            "version",
            Value::int(i64::try_from(policy.version()).unwrap_or(i64::MAX)),
        );
        state.set("digest", Value::string(policy.digest()));
        state.set("document", Value::string(policy.document()));
        state
    }
}

/// The specification in `value`, if every part of it is known.
fn spec_of(value: &Value) -> Option<PolicySpec> {
    let known = ["name", "expires_at", "signer", "rule"]
        .iter()
        .all(|a| value.get(a).is_fully_known());
    if !known {
        return None;
    }
    let text = |v: &Value, name: &str| v.get(name).as_str().map(str::to_owned);
    Some(PolicySpec {
        name: text(value, "name").unwrap_or_default(),
        signers: value
            .get("signer")
            .as_list()
            .iter()
            .map(|s| SignerSpec {
                id: text(s, "id").unwrap_or_default(),
                role: text(s, "role").unwrap_or_default(),
                public_key_pem: text(s, "public_key_pem"),
                kms_key_id: text(s, "kms_key_id"),
            })
            .collect(),
        rules: value
            .get("rule")
            .as_list()
            .iter()
            .map(|r| RuleSpec {
                action: text(r, "action").unwrap_or_default(),
                threshold: r.get("threshold").as_i64().unwrap_or(0),
                roles: r
                    .get("roles")
                    .as_list()
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            })
            .collect(),
        expires_at: text(value, "expires_at"),
    })
}

fn report(errors: &[PolicyError], diags: &mut Diagnostics) {
    for e in errors {
        diags.error_at(
            AttributePath::from(&e.field),
            "Invalid policy",
            format!("{}: {}.", e.field, e.kind),
        );
    }
}

/// The policy that governs changes to the policy `prior` describes: the backend's record
/// (not the state, which whoever runs Terraform can edit), failing closed when it is missing or
/// unreadable.
async fn authority(ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) -> Option<Policy> {
    let id = prior.get("id").as_str()?;
    let schema = PolicyResource::new();
    let Some(stored) = record::load(ctx, RecordKind::Policy, id, &schema.schema, diags).await else {
        if !diags.has_errors() {
            diags.error(
                "Policy record missing",
                format!("The backend has no record of policy {id}, so nothing can approve changing it. Restore the record, or remove the resource from state (terraform state rm) if it is truly gone."),
            );
        }
        return None;
    };
    match Policy::from_document(stored.get("document").as_str().unwrap_or_default()) {
        Ok(policy) => Some(policy),
        Err(reason) => {
            diags.error("Policy record damaged", format!("The backend's record of policy {id} is not a valid policy ({reason}); restore it before changing the policy."));
            None
        }
    }
}

/// The governed change from `prior` to `to` (a new document digest, or the deletion marker),
/// when the prior policy governs its own updates.
fn update_change(prior: &Policy, to: String) -> Option<Change> {
    prior.rule(Action::PolicyUpdate)?;
    Some(Change {
        action: Action::PolicyUpdate,
        resource_type: "safebox_policy",
        from: Some(prior.digest()),
        to,
    })
}

fn deletion_marker(id: &str) -> String {
    attributes_digest(&serde_json::json!({ "deleted": id }))
}

fn version_of(value: &Value) -> u64 {
    value
        .get("version")
        .as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl Resource for PolicyResource {
    fn type_name(&self) -> &'static str {
        "safebox_policy"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        let Some(spec) = spec_of(config) else { return };
        // KMS keys are resolved at plan time, once the backend is configured.
        let pending = |_: &str| Err(String::new());
        if let Err(errors) = Policy::from_spec(&spec, 1, &pending) {
            let errors: Vec<PolicyError> = errors
                .into_iter()
                .filter(|e| !matches!(e.kind, PolicyErrorKind::Kms { .. }))
                .collect();
            report(&errors, diags);
        }
    }

    async fn plan(&self, ctx: &Ctx, prior: &Value, planned: &mut Value, diags: &mut Diagnostics) {
        let prior_version = version_of(prior);
        let Some(at_prior) = self.policy(ctx, planned, prior_version.max(1), diags).await else {
            return;
        };
        let unchanged = !prior.is_null() && prior.get("document").as_str() == Some(at_prior.document().as_str());
        let policy = if unchanged {
            at_prior
        } else {
            at_prior.with_version(prior_version + 1)
        };
        let id = planned.get("id").clone();
        *planned = Self::state(planned, "", &policy);
        planned.set("id", id);
        if prior.is_null() {
            // Creating the first policy is the trust bootstrap: nothing governs it yet.
            planned.set("change_digest", Value::Null);
            planned.set("approval_status", Value::Null);
            return;
        }
        if unchanged {
            governance::keep_approval(prior, planned);
            return;
        }
        let Some(old) = authority(ctx, prior, diags).await else {
            return;
        };
        match update_change(&old, policy.digest()) {
            Some(change) => governance::plan_change(ctx, planned, &[old, policy], &change, diags),
            None => {
                diags.warning(
                    "Policy changes are not governed",
                    format!("Policy {:?} has no policy.update rule, so anyone who can run terraform can change or delete it. Add a rule {{ action = \"policy.update\" ... }} to require approvals.", old.name()),
                );
                planned.set("change_digest", Value::Null);
                planned.set("approval_status", Value::Null);
            }
        }
    }

    async fn plan_destroy(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) {
        let (Some(old), Some(id)) = (authority(ctx, prior, diags).await, prior.get("id").as_str()) else {
            return;
        };
        let Some(change) = update_change(&old, deletion_marker(id)) else {
            return;
        };
        let mut planned = prior.clone();
        governance::plan_change(ctx, &mut planned, &[old], &change, diags);
        if let Some(digest) = planned.get("change_digest").as_str() {
            diags.warning(
                "Deleting a governed policy",
                format!(
                    "Deleting policy {id} is policy.update with change digest {digest}: {}.",
                    planned.get("approval_status").as_str().unwrap_or_default()
                ),
            );
        }
    }

    async fn create(&self, ctx: &Ctx, planned: &Value, _config: &Value, diags: &mut Diagnostics) -> Value {
        let Some(policy) = self.policy(ctx, planned, 1, diags).await else {
            return Value::Null;
        };
        let id = new_record_id("pol");
        let state = Self::state(planned, &id, &policy);
        record::store(ctx, RecordKind::Policy, &id, &state, diags).await;
        if diags.has_errors() {
            Value::Null
        } else {
            state
        }
    }

    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value {
        let Some(id) = state.get("id").as_str() else {
            return Value::Null;
        };
        let stored = record::load(ctx, RecordKind::Policy, id, &self.schema, diags)
            .await
            .unwrap_or(Value::Null);
        if !stored.is_null() && version_of(&stored) < version_of(state) {
            diags.error(
                "Policy rollback detected",
                format!(
                    "The backend holds version {} of policy {id}, older than the version {} this state last saw. Someone restored an old policy record; restore the current one (its document is in this state) before going on.",
                    version_of(&stored),
                    version_of(state)
                ),
            );
            return state.clone();
        }
        stored
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &Value,
        planned: &Value,
        _config: &Value,
        diags: &mut Diagnostics,
    ) -> Value {
        let Some(id) = prior.get("id").as_str() else {
            diags.error(
                "Policy has no id",
                "The prior state has no id; remove the resource from state and import it.",
            );
            return prior.clone();
        };
        let version = version_of(planned).max(1);
        let Some(policy) = self.policy(ctx, planned, version, diags).await else {
            return prior.clone();
        };
        let mut approved = None;
        let Some(old) = authority(ctx, prior, diags).await else {
            return prior.clone();
        };
        {
            if version < version_of(prior) {
                diags.error(
                    "Policy rollback refused",
                    format!(
                        "Version {version} is older than the current version {}; a policy's version only grows.",
                        version_of(prior)
                    ),
                );
                return prior.clone();
            }
            if old.document() != policy.clone().with_version(old.version()).document() {
                if let Some(change) = update_change(&old, policy.digest()) {
                    let Some(entry) = governance::enforce(ctx, planned, &[old, policy.clone()], &change, diags) else {
                        return prior.clone();
                    };
                    approved = Some(entry);
                }
            }
        }
        let mut state = Self::state(planned, id, &policy);
        for kept in ["change_digest", "approval_status"] {
            if state.get(kept).is_unknown() {
                state.set(kept, Value::Null);
            }
        }
        record::store(ctx, RecordKind::Policy, id, &state, diags).await;
        if diags.has_errors() {
            return prior.clone();
        }
        if let Some(entry) = approved {
            governance::record_change(ctx, entry, id, diags).await;
        }
        state
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) {
        let Some(id) = prior.get("id").as_str() else { return };
        let mut approved = None;
        let Some(old) = authority(ctx, prior, diags).await else {
            return;
        };
        {
            if let Some(change) = update_change(&old, deletion_marker(id)) {
                // The deletion's digest was never planned into state; enforce it as computed.
                let mut resource = prior.clone();
                resource.set("change_digest", Value::Null);
                let Some(entry) = governance::enforce(ctx, &resource, &[old], &change, diags) else {
                    return;
                };
                approved = Some(entry);
            }
        }
        record::remove(ctx, RecordKind::Policy, id, diags).await;
        if let Some(entry) = approved {
            if !diags.has_errors() {
                governance::record_change(ctx, entry, id, diags).await;
            }
        }
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Value {
        record::import(ctx, RecordKind::Policy, id, &self.schema, diags).await
    }
}
