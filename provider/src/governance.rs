//! Governed writes, shared by every governed resource: the change digest and approval status
//! computed at plan time, enforcement at apply, and the audit entry afterwards.
//!
//! A resource with a `policy_id` is governed. Plan computes `change_digest` (what auditors
//! sign) and `approval_status`, and warns when approvals are short; apply refuses, saying
//! which digest, which rule, who signed and what is missing, until they are not.

use safebox::cloud::RecordKind;
use safebox::govern::approval::{change_digest, evaluate, read_approvals_dir, Approval, ApprovalStatus};
use safebox::govern::audit::AuditEntry;
use safebox::govern::policy::Policy;
use safebox::govern::Action;

use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::Attribute;
use crate::framework::types::Type;
use crate::framework::validators::not_blank;
use crate::framework::value::Value;
use crate::resource::Ctx;
use crate::resources::record;

/// How long before expiry plans start warning.
const EXPIRY_WARNING: time::Duration = time::Duration::days(30);

/// The attributes every governed resource has.
#[must_use]
pub fn attributes() -> Vec<Attribute> {
    vec![
        Attribute::optional("policy_id", Type::String)
            .describe("The `safebox_policy` governing this resource; its changes then need approvals.")
            .validate(not_blank()),
        Attribute::optional("approvals", Type::list(approval_type()))
            .describe("Approvals given inline, besides those in the provider's `approvals_dir`."),
        Attribute::computed("change_digest", Type::String)
            .describe("What auditors sign for this change (`sha256:<hex>`)."),
        Attribute::computed("approval_status", Type::String)
            .describe("How the collected approvals stand against the policy's rule."),
    ]
}

fn approval_type() -> Type {
    Type::object([
        ("signer", Type::String),
        ("action", Type::String),
        ("digest", Type::String),
        ("signature", Type::String),
    ])
}

/// One governed change.
#[derive(Debug, Clone)]
pub struct Change {
    /// The action.
    pub action: Action,
    /// The resource type.
    pub resource_type: &'static str,
    /// Digest of the governed attributes before (none when creating).
    pub from: Option<String>,
    /// Digest of the governed attributes after.
    pub to: String,
}

impl Change {
    /// The change digest under `policy`.
    #[must_use]
    pub fn digest(&self, policy: &Policy) -> String {
        change_digest(
            self.action,
            self.resource_type,
            &policy.digest(),
            self.from.as_deref(),
            &self.to,
        )
    }
}

/// The policy `policy_id` names, from the backend.
pub async fn load_policy(ctx: &Ctx, policy_id: &str, diags: &mut Diagnostics) -> Option<Policy> {
    let schema = crate::resources::policy::PolicyResource::new();
    let state = record::load_referenced(
        ctx,
        RecordKind::Policy,
        policy_id,
        crate::resource::Resource::schema(&schema),
        "policy_id",
        "safebox_policy",
        diags,
    )
    .await?;
    match Policy::from_document(state.get("document").as_str().unwrap_or_default()) {
        Ok(policy) => Some(policy),
        Err(reason) => {
            diags.error_at(
                AttributePath::attr_root("policy_id"),
                "Unreadable policy",
                format!("The stored policy {policy_id} is damaged: {reason}."),
            );
            None
        }
    }
}

/// Approvals from the provider's `approvals_dir` and the resource's inline `approvals`.
pub fn collect_approvals(ctx: &Ctx, resource: &Value, diags: &mut Diagnostics) -> Vec<Approval> {
    let mut approvals = Vec::new();
    if let Some(dir) = &ctx.configured.approvals_dir {
        match read_approvals_dir(dir) {
            Ok(found) => approvals.extend(found),
            Err(reason) => diags.error(
                "Unreadable approvals",
                format!("approvals_dir: {reason}. Fix or remove that file."),
            ),
        }
    }
    for item in resource.get("approvals").as_list() {
        let text = |name: &str| item.get(name).as_str().unwrap_or_default().to_owned();
        approvals.push(Approval {
            signer: text("signer"),
            action: text("action"),
            digest: text("digest"),
            signature: text("signature"),
        });
    }
    approvals
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// How to collect the missing approvals, for diagnostics.
#[must_use]
pub fn how_to_sign(action: Action, digest: &str, status: &ApprovalStatus) -> String {
    let signer = status.missing.first().map_or("SIGNER", String::as_str);
    format!(
        "Each missing signer runs `safebox approve --key KEY.pem --signer {signer} --action {action} --digest {digest} --out approvals/{signer}.json` (or signs the text `safebox-approval:v1:{action}:{digest}` with openssl) and the approval goes into the provider's approvals_dir."
    )
}

/// Warns (or, past expiry, errors) about `policy`'s expiry.
pub fn expiry_diagnostics(policy: &Policy, action: Action, diags: &mut Diagnostics) {
    let Some(expires) = policy.expires_at() else { return };
    if policy.expired_at(now()) && action != Action::PolicyUpdate {
        diags.error_at(
            AttributePath::attr_root("policy_id"),
            "Policy expired",
            format!(
                "Policy {:?} expired at {expires}; it no longer authorises {action}. Renew it: set a later expires_at on the safebox_policy and apply that update with its policy.update approvals.",
                policy.name()
            ),
        );
    } else if expires - now() < EXPIRY_WARNING {
        diags.warning(
            "Policy expires soon",
            format!("Policy {:?} expires at {expires}. Renew it before then (a later expires_at, applied with its policy.update approvals), or governed changes will be refused.", policy.name()),
        );
    }
}

/// Keeps the approval of a change already made: a plan that is not a governed change (no
/// create, replace or policy update) carries `change_digest` and `approval_status` over.
pub fn keep_approval(prior: &Value, planned: &mut Value) {
    for kept in ["change_digest", "approval_status"] {
        planned.set(kept, prior.get(kept).clone());
    }
}

/// Sets `change_digest` and `approval_status` on a planned governed resource, and warns when
/// approvals are short. `change` is `None` while what it would govern is not known yet.
pub async fn plan(ctx: &Ctx, planned: &mut Value, change: Option<Change>, diags: &mut Diagnostics) {
    let policy_id = planned.get("policy_id").clone();
    if policy_id.is_null() {
        planned.set("change_digest", Value::Null);
        planned.set("approval_status", Value::Null);
        return;
    }
    let (Some(policy_id), Some(change)) = (policy_id.as_str(), change) else {
        planned.set("change_digest", Value::Unknown);
        planned.set("approval_status", Value::Unknown);
        return;
    };
    let Some(policy) = load_policy(ctx, policy_id, diags).await else {
        return;
    };
    plan_change(ctx, planned, &[policy], &change, diags);
}

/// Counts approvals of `change` against every policy in `policies`. The first is the
/// authority: the change digest names it and it must have a rule for the action. Later ones
/// (the new policy of a `policy.update`) must be met too when they have a rule for it.
fn evaluate_all(
    policies: &[Policy],
    change: &Change,
    approvals: &[Approval],
) -> Result<(String, Vec<ApprovalStatus>), safebox::govern::approval::GovernanceError> {
    let digest = change.digest(&policies[0]);
    let mut statuses = Vec::new();
    for (index, policy) in policies.iter().enumerate() {
        if index > 0 && policy.rule(change.action).is_none() {
            continue;
        }
        statuses.push(evaluate(policy, change.action, &digest, approvals)?);
    }
    Ok((digest, statuses))
}

fn summary(statuses: &[ApprovalStatus]) -> String {
    match statuses {
        [only] => only.summary(),
        many => many
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} policy: {}", if i == 0 { "current" } else { "new" }, s.summary()))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// [`plan`] for an already-loaded authority (and, for `policy.update`, the new policy).
pub fn plan_change(ctx: &Ctx, planned: &mut Value, policies: &[Policy], change: &Change, diags: &mut Diagnostics) {
    let approvals = collect_approvals(ctx, planned, diags);
    match evaluate_all(policies, change, &approvals) {
        Ok((digest, statuses)) => {
            expiry_diagnostics(&policies[0], change.action, diags);
            if let Some(short) = statuses.iter().find(|s| !s.satisfied()) {
                diags.warning(
                    format!("Approvals missing for {}", change.action),
                    format!(
                        "Change digest {digest} needs more approvals: {} ({}). Apply will refuse until it is approved. {}",
                        summary(&statuses),
                        rule_text(short),
                        how_to_sign(change.action, &digest, short)
                    ),
                );
            }
            planned.set("change_digest", Value::string(&digest));
            planned.set("approval_status", Value::string(summary(&statuses)));
        }
        Err(e) => diags.error_at(
            AttributePath::attr_root("policy_id"),
            "No rule for this change",
            format!("{e}."),
        ),
    }
}

fn rule_text(status: &ApprovalStatus) -> String {
    format!("rule: {} of role {}", status.threshold, status.roles.join(" or "))
}

/// Refuses the change unless its approvals meet every policy's rule; returns the audit entry
/// to record once the change is made.
pub fn enforce(
    ctx: &Ctx,
    resource: &Value,
    policies: &[Policy],
    change: &Change,
    diags: &mut Diagnostics,
) -> Option<AuditEntry> {
    let approvals = collect_approvals(ctx, resource, diags);
    let (digest, statuses) = match evaluate_all(policies, change, &approvals) {
        Ok(result) => result,
        Err(e) => {
            diags.error_at(
                AttributePath::attr_root("policy_id"),
                "No rule for this change",
                format!("{e}."),
            );
            return None;
        }
    };
    if let Some(planned) = resource.get("change_digest").as_str() {
        if planned != digest {
            diags.error(
                "The change differs from the plan",
                format!("The plan showed change digest {planned}, but applying it now gives {digest} (the policy or an input changed). Nothing was changed; run terraform plan again and collect approvals for the new digest."),
            );
            return None;
        }
    }
    expiry_diagnostics(&policies[0], change.action, diags);
    if diags.has_errors() {
        return None;
    }
    if let Some(short) = statuses.iter().find(|s| !s.satisfied()) {
        diags.error(
            format!("{} is not approved", change.action),
            format!(
                "Refusing {} with change digest {digest}: {} ({} in policy {:?}). Signed by: {}. {}",
                change.action,
                summary(&statuses),
                rule_text(short),
                policies[0].name(),
                if short.counted.is_empty() {
                    "nobody".to_owned()
                } else {
                    short.counted.join(", ")
                },
                how_to_sign(change.action, &digest, short)
            ),
        );
        return None;
    }
    let counted: Vec<&String> = statuses.iter().flat_map(|s| &s.counted).collect();
    let mut used: Vec<Approval> = approvals
        .into_iter()
        .filter(|a| a.digest == digest && a.action == change.action.as_str() && counted.contains(&&a.signer))
        .collect();
    used.sort_by(|a, b| a.signer.cmp(&b.signer));
    used.dedup_by(|a, b| a.signer == b.signer);
    Some(AuditEntry {
        sequence: 0,
        time: crate::resources::rfc3339_ms(u64::try_from(now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)),
        action: change.action.as_str().to_owned(),
        resource_type: change.resource_type.to_owned(),
        resource_id: String::new(),
        from: change.from.clone(),
        to: change.to.clone(),
        change_digest: digest,
        policy_digest: policies[0].digest(),
        policy_document: policies[0].document(),
        new_policy_document: policies.get(1).map(Policy::document),
        approvals: used,
        previous: None,
        entry_sha256: String::new(),
    })
}

/// Appends an enforced change to the backend's audit log.
pub async fn record_change(ctx: &Ctx, mut entry: AuditEntry, resource_id: &str, diags: &mut Diagnostics) {
    entry.resource_id = resource_id.to_owned();
    if let Err(e) = ctx.configured.cloud.append_audit(entry).await {
        diags.error(
            "Cannot write the audit log",
            format!("The change was made but could not be logged: {e}."),
        );
    }
}
