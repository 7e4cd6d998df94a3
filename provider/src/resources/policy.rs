//! `safebox_policy`: an M-of-N governance policy.
//!
//! The canonical `document`, its `digest` and the `version` are computed at plan time, so
//! auditors see exactly what they will be asked to trust before anything is applied. The
//! version grows by one whenever the document's content changes. Signers and rules are sets:
//! the order of their blocks is not part of the policy, so reordering them changes nothing.
//!
//! Creating a policy is the trust bootstrap (nothing governs it) and is written to the audit
//! log as `policy.create`, which is what later changes trace the policy back to. Changing it
//! (renaming included) or deleting it is `policy.update`, approved by the quorum of the version
//! in force and, for a change, of the new version too.

use std::collections::HashMap;

use safebox::cloud::{new_record_id, RecordKind};
use safebox::field::FieldStep;
use safebox::govern::audit::{AuditEntry, POLICY_CHANGE, POLICY_CREATE};
use safebox::govern::keys::PublicKey;
use safebox::govern::policy::{Policy, PolicyError, PolicyErrorKind, PolicySpec, RuleSpec, SignerSpec};
use safebox::govern::Action;

use crate::config::Capability;
use crate::framework::diag::Diagnostics;
use crate::framework::model::{fully_known, StringList, Tf};
use crate::framework::modifiers::use_state_for_unknown;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, NestedBlock, Schema};
use crate::framework::types::Type;
use crate::framework::validators::{not_blank, one_of, whole_number};
use crate::governance::{self, attributes_digest, Change, ChangeModel, Governor, PolicySource};
use crate::record;
use crate::resource::{Ctx, Resource};

const ACTIONS: &[&str] = &[
    "image.publish",
    "image.share",
    "enclave.deploy",
    "link.create",
    "policy.update",
    "key.bind",
];

crate::model! {
    /// A `signer` block.
    pub struct SignerModel {
        /// Unique signer id.
        id: Tf<String>,
        /// The signer's role.
        role: Tf<String>,
        /// The public key (PEM).
        public_key_pem: Tf<String>,
        /// Or a KMS key holding it.
        kms_key_id: Tf<String>,
    }
}

crate::model! {
    /// A `rule` block.
    pub struct RuleModel {
        /// The governed action.
        action: Tf<String>,
        /// How many signers must approve.
        threshold: Tf<i64>,
        /// Roles whose signers may approve.
        roles: StringList,
    }
}

crate::model! {
    /// A `safebox_policy`.
    pub struct PolicyModel {
        /// The policy's id.
        id: Tf<String>,
        /// Its name.
        name: Tf<String>,
        /// When it stops authorising changes.
        expires_at: Tf<String>,
        /// Its version.
        version: Tf<i64>,
        /// `sha256:` of the document.
        digest: Tf<String>,
        /// The canonical document.
        document: Tf<String>,
        /// The signers.
        signer: Tf<Vec<SignerModel>>,
        /// The rules.
        rule: Tf<Vec<RuleModel>>,
    }
    embed {
        /// Its last governed change.
        change: ChangeModel,
    }
}

impl PolicyModel {
    /// The version, 0 when not known.
    fn version(&self) -> u64 {
        self.version.known().and_then(|v| u64::try_from(*v).ok()).unwrap_or(0)
    }

    /// This value with the computed attributes of `policy` filled in.
    fn with(&self, policy: &Policy) -> Self {
        Self {
            version: Tf::Known(i64::try_from(policy.version()).unwrap_or(i64::MAX)),
            digest: Tf::string(policy.digest()),
            document: Tf::string(policy.document()),
            ..self.clone()
        }
    }

    /// The specification, if every part of it is known.
    fn spec(&self) -> Option<PolicySpec> {
        let inputs_known = fully_known(&self.name)
            && fully_known(&self.expires_at)
            && fully_known(&self.signer)
            && fully_known(&self.rule);
        if !inputs_known {
            return None;
        }
        let text = |field: &Tf<String>| field.known().cloned();
        Some(PolicySpec {
            name: text(&self.name).unwrap_or_default(),
            signers: self
                .signer
                .items()
                .iter()
                .map(|s| SignerSpec {
                    id: text(&s.id).unwrap_or_default(),
                    role: text(&s.role).unwrap_or_default(),
                    public_key_pem: text(&s.public_key_pem),
                    kms_key_id: text(&s.kms_key_id),
                })
                .collect(),
            rules: self
                .rule
                .items()
                .iter()
                .map(|r| RuleSpec {
                    action: text(&r.action).unwrap_or_default(),
                    threshold: r.threshold.known().copied().unwrap_or(0),
                    roles: r.roles.strings().unwrap_or_default(),
                })
                .collect(),
            expires_at: text(&self.expires_at),
        })
    }
}

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
    /// Its records, and the attributes refresh recomputes (which a record may hold older).
    fn records(&self) -> record::Records<'_> {
        record::Records {
            kind: RecordKind::Policy,
            schema: &self.schema,
            live: &[],
        }
    }

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
                .describe("The governed action: `image.publish`, `image.share`, `enclave.deploy`, `link.create`, `policy.update` or `key.bind`.")
                .validate(one_of(ACTIONS)),
            Attribute::required("threshold", Type::Number)
                .describe("How many distinct eligible signers must approve; between 1 and the number of signers holding the named roles.")
                .validate(whole_number()),
            Attribute::required("roles", Type::list(Type::String)).describe("Roles whose signers may approve."),
        ]);
        let block = Block::new(
            vec![
                Attribute::computed("id", Type::String)
                    .describe("The policy's id in the backend; import by it.")
                    .modify(use_state_for_unknown()),
                Attribute::required("name", Type::String)
                    .describe("The policy's name. Renaming is a change of the policy (`policy.update`), in place.")
                    .validate(not_blank()),
                Attribute::optional("expires_at", Type::String)
                    .describe("When the policy stops authorising changes (RFC 3339)."),
                Attribute::computed("version", Type::Number)
                    .describe("Starts at 1 and grows by one with every change of the document."),
                Attribute::computed("digest", Type::String).describe("`sha256:<hex>` of `document`."),
                Attribute::computed("document", Type::String)
                    .describe("The policy as canonical JSON (RFC 8785): what approvals and auditors refer to."),
            ]
            .into_iter()
            .chain(
                governance::attributes(PolicySource::Own)
                    .into_iter()
                    .filter(|a| a.name != "policy_id"),
            )
            .collect(),
        )
        .with_blocks(vec![
            NestedBlock::set("signer", signer, 1),
            NestedBlock::set("rule", rule, 1),
        ])
        .describe("An M-of-N governance policy: signers held by auditors the customer chooses, roles and per-action thresholds.");
        Self {
            schema: Schema { version: 1, block },
        }
    }

    /// Validates `value` into a policy at `version`, resolving KMS signers through the backend.
    async fn policy(&self, ctx: &Ctx, value: &PolicyModel, version: u64, diags: &mut Diagnostics) -> Option<Policy> {
        let spec = value.spec()?;
        let mut kms_keys: HashMap<String, Result<PublicKey, String>> = HashMap::new();
        for kms in spec.signers.iter().filter_map(|s| s.kms_key_id.clone()) {
            let key = match ctx.configured.cloud.kms_signers() {
                Some(signers) => signers.kms_public_key(&kms).await.map_err(|e| e.to_string()),
                None => Err(ctx
                    .configured
                    .lacks(Capability::KmsSigners)
                    .map(|(_, detail)| detail)
                    .unwrap_or_default()),
            };
            kms_keys.insert(kms, key);
        }
        let resolve = |id: &str| kms_keys.get(id).cloned().unwrap_or_else(|| Err("not resolved".into()));
        match Policy::from_spec(&spec, version, &resolve) {
            Ok(policy) => Some(policy),
            Err(errors) => {
                report(&errors, &spec, diags);
                None
            }
        }
    }
}

/// Where a policy error is, for the user: signer and rule blocks are sets, so a block is named
/// by its signer id or its rule's action, and the error is attached to the block type.
fn locate(error: &PolicyError, spec: &PolicySpec) -> (AttributePath, String) {
    let steps = error.field.steps();
    let named = match steps {
        [FieldStep::Name(block), FieldStep::Index(index), rest @ ..] => {
            let label = match block.as_str() {
                "signer" => spec.signers.get(*index).map(|s| format!("signer {:?}", s.id)),
                "rule" => spec.rules.get(*index).map(|r| format!("rule {:?}", r.action)),
                _ => None,
            };
            label.map(|label| {
                let inner: Vec<String> = rest
                    .iter()
                    .map(|step| match step {
                        FieldStep::Name(name) => name.clone(),
                        FieldStep::Index(i) => format!("[{i}]"),
                        FieldStep::Key(k) => format!("[{k:?}]"),
                    })
                    .collect();
                (
                    AttributePath::attr_root(block),
                    format!("{label} {}", inner.join(".").replace(".[", "[")),
                )
            })
        }
        _ => None,
    };
    named.unwrap_or_else(|| (AttributePath::from(&error.field), error.field.to_string()))
}

fn report(errors: &[PolicyError], spec: &PolicySpec, diags: &mut Diagnostics) {
    for e in errors {
        let (path, place) = locate(e, spec);
        diags.error_at(path, "Invalid policy", format!("{place}: {}.", e.kind));
    }
}

/// The version in force of the policy `prior` describes: the backend's record, checked against
/// the audit log (not the state, which whoever runs Terraform can edit).
async fn authority(ctx: &Ctx, prior: &PolicyModel, diags: &mut Diagnostics) -> Option<Governor> {
    let id = prior.id.as_deref()?;
    governance::governor(ctx, id, "id", diags).await
}

/// The governed change from `prior` to `to` (a new document digest, or the deletion marker),
/// when the policy in force governs its own updates.
fn update_change(id: &str, prior: &Policy, to: String) -> Option<Change> {
    prior.rule(Action::PolicyUpdate)?;
    Some(Change::update(
        Action::PolicyUpdate,
        "safebox_policy",
        id,
        prior.digest(),
        to,
    ))
}

fn deletion_marker(id: &str) -> String {
    attributes_digest(&serde_json::json!({ "deleted": id }))
}

/// A plan whose change nothing governs: no digest nor approvals, and the log's head after it
/// is known once it is logged at apply.
fn bootstrap(planned: &mut ChangeModel) {
    planned.change_digest = Tf::Null;
    planned.approval_status = Tf::Null;
    planned.audit_head = Tf::Unknown;
}

/// Warns at create (and errors never) about an expiry already past: the policy would
/// authorise nothing.
fn warn_expired(policy: &Policy, diags: &mut Diagnostics) {
    if policy.expired_at(time::OffsetDateTime::now_utc()) {
        diags.warning(
            "Policy already expired",
            format!(
                "expires_at is {}, which has passed: this policy will authorise no governed change. Set a later expires_at.",
                policy.expires_at().map(crate::clock::rfc3339).unwrap_or_default()
            ),
        );
    }
}

#[async_trait::async_trait]
impl Resource for PolicyResource {
    type Model = PolicyModel;

    fn type_name(&self) -> &'static str {
        "safebox_policy"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn validate(&self, config: &PolicyModel, diags: &mut Diagnostics) {
        let Some(spec) = config.spec() else { return };
        // KMS keys are resolved at plan time, once the backend is configured.
        let pending = |_: &str| Err(String::new());
        if let Err(errors) = Policy::from_spec(&spec, 1, &pending) {
            let errors: Vec<PolicyError> = errors
                .into_iter()
                .filter(|e| !matches!(e.kind, PolicyErrorKind::Kms { .. }))
                .collect();
            report(&errors, &spec, diags);
        }
    }

    async fn plan(
        &self,
        ctx: &Ctx,
        prior: Option<&PolicyModel>,
        planned: &mut PolicyModel,
        diags: &mut Diagnostics,
    ) -> Vec<AttributePath> {
        let prior_version = prior.map_or(0, PolicyModel::version);
        let Some(at_prior) = self.policy(ctx, planned, prior_version.max(1), diags).await else {
            return Vec::new();
        };
        let unchanged = prior.is_some_and(|p| p.document.as_deref() == Some(at_prior.document().as_str()));
        let policy = if unchanged {
            at_prior
        } else {
            at_prior.with_version(prior_version + 1)
        };
        *planned = planned.with(&policy);
        let Some(prior) = prior else {
            warn_expired(&policy, diags);
            // Creating a policy is the trust bootstrap: nothing governs it. Its creation is
            // logged at apply.
            bootstrap(&mut planned.change);
            return Vec::new();
        };
        governance::check_anchor(ctx, &prior.change, diags).await;
        governance::keep(&prior.change, &mut planned.change);
        if unchanged {
            return Vec::new();
        }
        let Some(old) = authority(ctx, prior, diags).await else {
            return Vec::new();
        };
        let id = prior.id.as_deref().unwrap_or_default().to_owned();
        match update_change(&id, &old.policy, policy.digest()) {
            Some(change) => {
                let new = Governor { policy_id: id, policy };
                governance::plan(ctx, &mut planned.change, &[old, new], change, diags).await;
            }
            None => {
                diags.warning(
                    "Policy changes are not governed",
                    format!("Policy {:?} has no policy.update rule, so anyone who can run terraform can change or delete it. Add a rule {{ action = \"policy.update\" ... }} to require approvals.", old.policy.name()),
                );
                bootstrap(&mut planned.change);
            }
        }
        Vec::new()
    }

    async fn plan_destroy(&self, ctx: &Ctx, prior: &PolicyModel, diags: &mut Diagnostics) {
        let Some(id) = prior.id.as_deref() else { return };
        let Some(old) = authority(ctx, prior, diags).await else {
            return;
        };
        let Some(change) = update_change(id, &old.policy, deletion_marker(id)) else {
            return;
        };
        let mut planned = prior.change.clone();
        planned.change_digest = Tf::Null;
        let name = old.policy.name().to_owned();
        governance::plan(ctx, &mut planned, &[old], change, diags).await;
        if let Some(digest) = planned.change_digest.as_deref() {
            diags.warning(
                "Deleting a governed policy",
                format!("Deleting policy {name:?} ({id}) is policy.update with change digest {digest}; apply refuses until its approvals are in."),
            );
        }
    }

    async fn create(
        &self,
        ctx: &Ctx,
        planned: &PolicyModel,
        _config: &PolicyModel,
        diags: &mut Diagnostics,
    ) -> Option<PolicyModel> {
        let policy = self.policy(ctx, planned, 1, diags).await?;
        let id = new_record_id("pol");
        let mut state = PolicyModel {
            id: Tf::string(&id),
            ..planned.with(&policy)
        };
        // Logged first: a policy the log does not know can govern nothing.
        let head = governance::record_event(
            ctx,
            AuditEntry::record(POLICY_CREATE, "safebox_policy", &id, &policy, None, policy.digest()),
            diags,
        )
        .await?;
        state.change.change_digest = Tf::Null;
        state.change.approval_status = Tf::Null;
        state.change.audit_head = Tf::string(head.to_string());
        record::create(ctx, RecordKind::Policy, &id, &state, diags).await;
        (!diags.has_errors()).then_some(state)
    }

    async fn read(&self, ctx: &Ctx, state: &PolicyModel, diags: &mut Diagnostics) -> Option<PolicyModel> {
        let id = state.id.as_deref()?;
        governance::check_anchor(ctx, &state.change, diags).await;
        let stored: PolicyModel = record::load(ctx, RecordKind::Policy, id, &self.schema, diags).await?;
        if stored.version() < state.version() {
            diags.error(
                "Policy rollback detected",
                format!(
                    "The backend holds version {} of policy {id}, older than the version {} this state last saw. Someone restored an old policy record; restore the current one (its document is in this state) before going on.",
                    stored.version(),
                    state.version()
                ),
            );
            return Some(state.clone());
        }
        Some(
            record::load_checked(ctx, self.records(), id, state, diags)
                .await
                .unwrap_or_else(|| state.clone()),
        )
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &PolicyModel,
        planned: &PolicyModel,
        _config: &PolicyModel,
        diags: &mut Diagnostics,
    ) -> PolicyModel {
        let Some(id) = prior.id.as_deref() else {
            diags.error(
                "Policy has no id",
                "The prior state has no id; remove the resource from state and import it.",
            );
            return prior.clone();
        };
        let version = planned.version().max(1);
        let Some(policy) = self.policy(ctx, planned, version, diags).await else {
            return prior.clone();
        };
        if version < prior.version() {
            diags.error(
                "Policy rollback refused",
                format!(
                    "Version {version} is older than the current version {}; a policy's version only grows.",
                    prior.version()
                ),
            );
            return prior.clone();
        }
        let Some(old) = authority(ctx, prior, diags).await else {
            return prior.clone();
        };
        let mut state = PolicyModel {
            id: Tf::string(id),
            ..planned.with(&policy)
        };
        governance::keep(&prior.change, &mut state.change);
        let changed = old.policy.document() != policy.clone().with_version(old.policy.version()).document();
        let authorization = match update_change(id, &old.policy, policy.digest()).filter(|_| changed) {
            Some(change) => {
                let new = Governor {
                    policy_id: id.to_owned(),
                    policy: policy.clone(),
                };
                let Some(authorization) =
                    governance::authorize(ctx, &planned.change, &[old.clone(), new], &change, diags).await
                else {
                    return prior.clone();
                };
                Some(authorization.introducing(&policy))
            }
            None => None,
        };
        match authorization {
            Some(authorization) => governance::record(ctx, authorization, id, &mut state.change, diags).await,
            None if changed => {
                // Ungoverned, but the log must still show which version is in force.
                let entry = AuditEntry::record(
                    POLICY_CHANGE,
                    "safebox_policy",
                    id,
                    &old.policy,
                    Some(&policy),
                    policy.digest(),
                );
                let Some(head) = governance::record_event(ctx, entry, diags).await else {
                    return prior.clone();
                };
                state.change.change_digest = Tf::Null;
                state.change.approval_status = Tf::Null;
                state.change.audit_head = Tf::string(head.to_string());
            }
            None => {}
        }
        if diags.has_errors() {
            return prior.clone();
        }
        record::store_update(ctx, (self.records(), id), prior, &state, diags).await
    }

    async fn delete(&self, ctx: &Ctx, prior: &PolicyModel, diags: &mut Diagnostics) {
        let Some(id) = prior.id.as_deref() else { return };
        let Some(old) = authority(ctx, prior, diags).await else {
            return;
        };
        let change = update_change(id, &old.policy, deletion_marker(id));
        let authorization = match &change {
            Some(change) => {
                // The deletion's digest was never planned into state; enforce it as computed.
                let resource = ChangeModel {
                    change_digest: Tf::Null,
                    ..prior.change.clone()
                };
                let Some(authorization) =
                    governance::authorize(ctx, &resource, std::slice::from_ref(&old), change, diags).await
                else {
                    return;
                };
                Some(authorization)
            }
            None => None,
        };
        record::remove(ctx, RecordKind::Policy, id, diags).await;
        if diags.has_errors() {
            return;
        }
        match authorization {
            Some(authorization) => {
                governance::record(ctx, authorization, id, &mut prior.change.clone(), diags).await;
            }
            None => {
                let entry = AuditEntry::record(
                    POLICY_CHANGE,
                    "safebox_policy",
                    id,
                    &old.policy,
                    None,
                    deletion_marker(id),
                );
                governance::record_event(ctx, entry, diags).await;
            }
        }
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Option<PolicyModel> {
        record::import(ctx, RecordKind::Policy, id, &self.schema, diags).await
    }

    fn upgrade_state(&self, from: i64, state: serde_json::Value) -> Result<serde_json::Value, String> {
        // Version 0 kept signer and rule blocks as lists; as sets they are stored the same way.
        if from == 0 {
            Ok(state)
        } else {
            Err(format!(
                "state of schema version {from} cannot be upgraded to version {}",
                self.schema.version
            ))
        }
    }
}
