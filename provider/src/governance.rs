//! Governance: the one layer every governed change passes through, between the framework and
//! the resources. It knows policies, approvals and the audit log; it knows no resource.
//!
//! A resource that is governed (it names a `policy_id`, or uses a governed image or box)
//! describes its change as a core [`Change`]; this layer turns it into the change digest
//! auditors sign and applies the rules:
//!
//! - **The governing policy** is the backend's record, checked against the audit log: the log
//!   must put exactly that version in force (created by `policy.create`, or introduced by an
//!   approved `policy.update`). A record changed outside Terraform is refused, whatever its
//!   signers say.
//! - **Plan** shows the change digest (known as soon as what it governs is known) and warns
//!   with how the approvals stand. `approval_status` and `audit_head` are planned unknown:
//!   approvals may arrive between `terraform plan -out` and the apply of that saved plan, and
//!   nothing that can change in between is a planned value.
//! - **Apply** recomputes the digest, refuses one that differs from the plan or that the log
//!   already recorded (an approval authorises one change, once), counts the approvals, and
//!   after the change appends the entry and records the log's new head in the resource's
//!   state.
//! - **Anchors**: every governed resource's state keeps the head the log had after its change
//!   (`audit_head`). Each plan and refresh checks that the log still holds every head it sees,
//!   and the backend never appends to a log that does not: a log cut short or rewritten is
//!   found, not extended.
//!
//! Identical changes get distinct digests through their occurrence (how many times the same
//! change was enforced before). Entries this provider process wrote itself do not count, so
//! the final plan Terraform makes just before applying each resource shows the digest the
//! saved plan showed.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError};

use safebox::cloud::RecordKind;
use safebox::govern::approval::{evaluate, read_approvals_dir, Approval, ApprovalStatus, GovernanceError};
use safebox::govern::audit::{AuditEntry, AuditHead, VerifiedLog, VerifyOptions};
pub use safebox::govern::change::{attributes_digest, Change};
use safebox::govern::policy::Policy;
use safebox::govern::Action;
use sha2::{Digest as _, Sha256};

use crate::clock::{now_ms, rfc3339, rfc3339_ms};
use crate::framework::diag::Diagnostics;
use crate::framework::model::Tf;
use crate::framework::modifiers::use_state_for_unknown;
use crate::framework::path::AttributePath;
use crate::framework::schema::Attribute;
use crate::framework::types::Type;
use crate::framework::validators::not_blank;
use crate::record;
use crate::resource::Ctx;

/// How long before expiry plans start warning.
const EXPIRY_WARNING: time::Duration = time::Duration::days(30);

/// What this provider process saw of the audit log and wrote to it.
#[derive(Debug, Default)]
pub struct AuditRun {
    /// The latest head seen (in a state, or after an append): the log must still hold it.
    floor: Option<AuditHead>,
    /// Sequence numbers of the entries this process appended.
    written: BTreeSet<u64>,
    /// The last verified log, by the SHA-256 of its text.
    cache: Option<([u8; 32], Arc<VerifiedLog>)>,
}

/// Whether a resource names its policy or takes the policy of what it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// `policy_id` is the resource's own choice (images).
    Own,
    /// `policy_id` defaults to the policy of the image or boxes the resource uses and may
    /// only name that one (boxes, links, sealed keys).
    Inherited,
}

/// The attributes every governed resource has.
#[must_use]
pub fn attributes(source: PolicySource) -> Vec<Attribute> {
    let policy_id = match source {
        PolicySource::Own => Attribute::optional("policy_id", Type::String)
            .describe("The `safebox_policy` governing this resource; its changes then need approvals. Moving the resource to another policy, or removing it, is itself a governed change under the current policy."),
        PolicySource::Inherited => Attribute::optional_computed("policy_id", Type::String)
            .describe("The `safebox_policy` governing this resource. Default: the policy of the image or boxes it uses (a resource that uses a governed image or box is governed by the same policy); when set, it may only name that policy.")
            .modify(use_state_for_unknown()),
    };
    vec![
        policy_id.validate(not_blank()),
        Attribute::optional("approvals", Type::list(approval_type()))
            .describe("Approvals given inline, besides those in the provider's `approvals_dir`."),
        Attribute::computed("change_digest", Type::String)
            .describe("What auditors sign for this change (`sha256:<hex>`): one change of this resource, used once."),
        Attribute::computed("approval_status", Type::String)
            .describe("Who approved the last governed change, once applied. Known after apply: approvals may arrive between plan and apply, and the plan's warnings say how they stand."),
        Attribute::computed("audit_head", Type::String)
            .describe("The audit log's head (`SEQUENCE:sha256:HEX`) after this resource's last recorded change. Every plan checks that the log still holds it; `safebox audit verify --expect-head` does too."),
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

crate::model! {
    /// An approval given inline (`approvals`).
    pub struct ApprovalModel {
        /// The signer's id.
        signer: Tf<String>,
        /// The governed action.
        action: Tf<String>,
        /// The change digest signed.
        digest: Tf<String>,
        /// The signature (base64).
        signature: Tf<String>,
    }
}

crate::model! {
    /// What a governed change leaves in a resource's state, and the approvals given inline.
    pub struct ChangeModel {
        /// Approvals given inline.
        approvals: Tf<Vec<ApprovalModel>>,
        /// The last governed change's digest.
        change_digest: Tf<String>,
        /// Who approved it.
        approval_status: Tf<String>,
        /// The audit log's head after it.
        audit_head: Tf<String>,
    }
}

crate::model! {
    /// The attributes of a governed resource ([`attributes`]).
    pub struct GovernanceModel {
        /// The governing policy.
        policy_id: Tf<String>,
    }
    embed {
        /// The change it records.
        change: ChangeModel,
    }
}

/// A policy that governs a change, as the backend's record and the audit log agree on it.
#[derive(Debug, Clone)]
pub struct Governor {
    /// The policy's resource id.
    pub policy_id: String,
    /// The policy.
    pub policy: Policy,
}

fn run(ctx: &Ctx) -> std::sync::MutexGuard<'_, AuditRun> {
    ctx.configured.audit.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The backend's audit log, verified (chain, approvals, policy lineage) and checked against
/// the latest head this process saw. Any failure is an error: governance fails closed.
pub async fn audit_log(ctx: &Ctx, diags: &mut Diagnostics) -> Option<Arc<VerifiedLog>> {
    // The floor as it was before the read: an append this process makes meanwhile (Terraform
    // applies in parallel) raises the floor past what this read could have seen.
    let floor = run(ctx).floor.clone();
    let text = match ctx.configured.store.read_audit().await {
        Ok(text) => text,
        Err(e) => {
            diags.error(
                "Cannot read the audit log",
                format!("{e}. Governed changes need it; nothing was changed."),
            );
            return None;
        }
    };
    let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let cached = run(ctx)
        .cache
        .as_ref()
        .filter(|(k, _)| *k == key)
        .map(|(_, log)| Arc::clone(log));
    let log = match cached {
        Some(log) => log,
        None => match safebox::govern::audit::verify(&text, &VerifyOptions::default()) {
            Ok(log) => {
                let log = Arc::new(log);
                run(ctx).cache = Some((key, Arc::clone(&log)));
                log
            }
            Err(e) => {
                diags.error(
                    "The audit log does not verify",
                    format!("{e}. Governed changes rely on it, so none is made until it is restored from a backup; `safebox audit verify` shows the same."),
                );
                return None;
            }
        },
    };
    if let Some(floor) = floor {
        if let Err(e) = log.holds(&floor) {
            diags.error("The audit log was rolled back", format!("{e}."));
            return None;
        }
    }
    Some(log)
}

/// Checks that the log still holds the head recorded in `state` (a governed resource's
/// `audit_head`), and raises this process's floor to it.
pub async fn check_anchor(ctx: &Ctx, state: &ChangeModel, diags: &mut Diagnostics) {
    let Some(text) = state.audit_head.as_deref() else {
        return;
    };
    let head: AuditHead = match text.parse() {
        Ok(head) => head,
        Err(e) => {
            diags.error_at(
                AttributePath::attr_root("audit_head"),
                "Damaged audit head in state",
                format!("{e}."),
            );
            return;
        }
    };
    let Some(log) = audit_log(ctx, diags).await else { return };
    if let Err(e) = log.holds(&head) {
        diags.error_at(
            AttributePath::attr_root("audit_head"),
            "The audit log was rolled back",
            format!("This resource's state records the audit log head {head}, but {e}."),
        );
        return;
    }
    let mut run = run(ctx);
    if run.floor.as_ref().is_none_or(|floor| floor.sequence < head.sequence) {
        run.floor = Some(head);
    }
}

/// The policy `policy_id`, from the backend's record, which must be the version the audit log
/// puts in force. Errors are reported at `attribute`.
pub async fn governor(ctx: &Ctx, policy_id: &str, attribute: &str, diags: &mut Diagnostics) -> Option<Governor> {
    let at = || AttributePath::attr_root(attribute);
    let raw = match record::raw(ctx, RecordKind::Policy, policy_id).await {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            diags.error_at(
                at(),
                "No such safebox_policy",
                format!("There is no safebox_policy with id {policy_id:?} in this backend. Reference one of this configuration (safebox_policy.NAME.id)."),
            );
            return None;
        }
        Err(e) => {
            diags.error_at(at(), "Unreadable policy", format!("{e}."));
            return None;
        }
    };
    let policy = match Policy::from_document(raw["document"].as_str().unwrap_or_default()) {
        Ok(policy) => policy,
        Err(reason) => {
            diags.error_at(
                at(),
                "Unreadable policy",
                format!("The stored policy {policy_id} is damaged: {reason}. Restore its record from a backup."),
            );
            return None;
        }
    };
    let log = audit_log(ctx, diags).await?;
    match log.policy_in_force(policy_id) {
        Some(digest) if digest == policy.digest() => Some(Governor {
            policy_id: policy_id.to_owned(),
            policy,
        }),
        Some(digest) => {
            diags.error_at(
                at(),
                "Policy record does not match the audit log",
                format!(
                    "The backend's record of policy {policy_id} is {}, but the audit log puts {digest} in force (its creation, or its last approved policy.update). The record was changed outside Terraform; nothing it would authorise is trusted. Restore the record (its document is in the policy's Terraform state), then plan again.",
                    policy.digest()
                ),
            );
            None
        }
        None => {
            diags.error_at(
                at(),
                "Policy not in the audit log",
                format!("The audit log does not show policy {policy_id} in force: it was never created through this provider's log (policies made before safebox 0.3.0 were not logged), or it was deleted. Create the policy again (terraform apply -replace=safebox_policy.NAME) so that its creation is logged, then plan again."),
            );
            None
        }
    }
}

/// Approvals of the change `digest`: from the provider's `approvals_dir`, the store's
/// `approvals/<digest>/` and the resource's inline `approvals`, with a warning for every file
/// or object passed over and for a configured folder that does not exist. A store that cannot
/// be read is a warning too: its approvals then do not count, so a change short of them is
/// refused.
pub async fn collect_approvals(
    ctx: &Ctx,
    resource: &ChangeModel,
    digest: &str,
    diags: &mut Diagnostics,
) -> Vec<Approval> {
    let mut approvals = Vec::new();
    if let Some(dir) = &ctx.configured.approvals_dir {
        match read_approvals_dir(dir) {
            Ok(folder) => {
                if !folder.exists {
                    diags.warning(
                        "approvals_dir does not exist",
                        format!("The provider's approvals_dir {} does not exist, so no approvals are read from it. Create it and put the signed approvals there.", dir.display()),
                    );
                }
                passed_over(&folder.skipped, diags);
                approvals.extend(folder.approvals);
            }
            Err(reason) => diags.warning(
                "Unreadable approvals_dir",
                format!("{reason}; no approval is read from it."),
            ),
        }
    }
    match ctx.configured.store.read_approvals(digest).await {
        Ok(stored) => {
            passed_over(&stored.skipped, diags);
            approvals.extend(stored.approvals);
        }
        Err(e) => diags.warning(
            "Cannot read the store's approvals",
            format!(
                "{e}; no approval is read from the store {}.",
                ctx.configured.store.location()
            ),
        ),
    }
    for item in resource.approvals.items() {
        let text = |field: &Tf<String>| field.as_deref().unwrap_or_default().to_owned();
        approvals.push(Approval {
            signer: text(&item.signer),
            action: text(&item.action),
            digest: text(&item.digest),
            signature: text(&item.signature),
        });
    }
    approvals
}

/// Warns about approvals files or objects that were not read.
fn passed_over(skipped: &[String], diags: &mut Diagnostics) {
    if !skipped.is_empty() {
        diags.warning(
            "Approvals files passed over",
            format!(
                "{}. These were not read, so no approval in them counts. Remove them, or replace them with files written by `safebox approve`.",
                skipped.join("; ")
            ),
        );
    }
}

/// How to collect the missing approvals, for diagnostics: into `approvals_dir` when one is
/// configured, else into the store (`--to` it).
#[must_use]
pub fn how_to_sign(ctx: &Ctx, action: Action, digest: &str, status: &ApprovalStatus) -> String {
    let signer = status.missing.first().map_or("SIGNER", String::as_str);
    let command = |destination: &str| {
        format!("`safebox approve --key KEY.pem --signer {signer} --action {action} --digest {digest} {destination}` (or signs the text `safebox-approval:v1:{action}:{digest}` with openssl)")
    };
    let store = ctx.configured.store.location();
    match &ctx.configured.approvals_dir {
        Some(dir) => format!(
            "Each missing signer runs {}.",
            command(&format!("--out {}", dir.join(format!("{signer}.json")).display()))
        ),
        None => format!(
            "Each missing signer runs {}, which puts the approval in the store; or writes it with --out FILE, then set approvals_dir = \"approvals\" in the provider block and put the files there, or give them in this resource's approvals attribute.",
            command(&format!("--to {store}"))
        ),
    }
}

/// Warns (or, past expiry, errors) about `policy`'s expiry.
fn expiry_diagnostics(policy: &Policy, action: Action, diags: &mut Diagnostics) {
    let Some(expires) = policy.expires_at() else { return };
    let now = time::OffsetDateTime::now_utc();
    if policy.expired_at(now) && action != Action::PolicyUpdate {
        diags.error_at(
            AttributePath::attr_root("policy_id"),
            "Policy expired",
            format!(
                "Policy {:?} expired at {}; it no longer authorises {action}. Renew it: set a later expires_at on the safebox_policy and apply that update with its policy.update approvals.",
                policy.name(),
                rfc3339(expires)
            ),
        );
    } else if expires - now < EXPIRY_WARNING {
        diags.warning(
            "Policy expires soon",
            format!(
                "Policy {:?} expires at {}. Renew it before then (a later expires_at, applied with its policy.update approvals), or governed changes will be refused.",
                policy.name(),
                rfc3339(expires)
            ),
        );
    }
}

/// The governed change of moving the resource `id` (of `resource_type`, whose changes are
/// `action`) from the policy `prior` names to the one `planned` names, or out of governance;
/// `None` when its policy does not change.
#[must_use]
pub fn move_change(
    action: Action,
    resource_type: &str,
    id: &str,
    prior: &GovernanceModel,
    planned: &GovernanceModel,
) -> Option<Change> {
    if prior.policy_id == planned.policy_id || planned.policy_id.is_unknown() {
        return None;
    }
    let policy = |g: &GovernanceModel| serde_json::json!({ "policy_id": g.policy_id.as_deref() });
    Some(Change::update(
        action,
        resource_type,
        id,
        attributes_digest(&policy(prior)),
        attributes_digest(&policy(planned)),
    ))
}

/// The policies an in-place update answers to: the prior policy (the authority), then the
/// planned one when the resource moves to it. Empty when the resource was not governed
/// (entering governance needs no approval); `None` (reported) when one cannot be loaded.
pub async fn update_governors(
    ctx: &Ctx,
    prior: &GovernanceModel,
    planned: &GovernanceModel,
    diags: &mut Diagnostics,
) -> Option<Vec<Governor>> {
    let mut governors = Vec::new();
    if let Some(old) = prior.policy_id.as_deref() {
        governors.push(governor(ctx, old, "policy_id", diags).await?);
        if let Some(new) = planned.policy_id.as_deref().filter(|new| *new != old) {
            governors.push(governor(ctx, new, "policy_id", diags).await?);
        }
    }
    Some(governors)
}

/// For a resource that takes the policy of what it uses (`inherited`: that policy, `None` when
/// what it uses is ungoverned), the policy an update plans: the inherited one when the user
/// names none (the resource follows what it uses; that move was approved there), an error when
/// the user names another. Returns whether the planned policy stands.
pub fn follow_inherited(
    inherited: Option<&str>,
    prior: &GovernanceModel,
    planned: &mut GovernanceModel,
    what: &str,
    diags: &mut Diagnostics,
) -> bool {
    let Some(inherited) = inherited else { return true };
    match planned.policy_id.as_deref() {
        Some(named) if named == inherited => true,
        // Not named in the configuration: the prior value was carried over; follow.
        _ if planned.policy_id == prior.policy_id || !matches!(planned.policy_id, Tf::Known(_)) => {
            planned.policy_id = Tf::string(inherited);
            true
        }
        named => {
            diags.error_at(
                AttributePath::attr_root("policy_id"),
                format!("A {what} takes the policy of what it uses"),
                format!(
                    "What this {what} uses is governed by policy {inherited}, so the {what} is governed by that policy too; policy_id names {}. Remove policy_id, or set it to {inherited}.",
                    named.unwrap_or("nothing")
                ),
            );
            false
        }
    }
}

/// What a resource that takes the policy of what it uses is called in messages: itself
/// (`"box"`) and what it uses, as a possessive (`"image's"`, `"boxes'"`).
pub type Naming = (&'static str, &'static str);

/// The policy governing a new resource that takes the policy of what it uses (`inherited`),
/// which its own `policy_id` may only repeat; else the one it names. Errors at `policy_id`;
/// `Ok(None)` when nothing governs it.
pub async fn inherited_governor(
    ctx: &Ctx,
    inherited: Option<&str>,
    own: &GovernanceModel,
    (what, uses): Naming,
    diags: &mut Diagnostics,
) -> Result<Option<Governor>, ()> {
    let policy_id = match (inherited, own.policy_id.as_deref()) {
        (Some(inherited), Some(own)) if inherited != own => {
            diags.error_at(
                AttributePath::attr_root("policy_id"),
                format!("A {what} takes its {uses} policy"),
                format!("What this {what} uses is governed by policy {inherited}, so the {what} is governed by that policy too; policy_id names {own}. Remove policy_id, or set it to the {uses} policy."),
            );
            return Err(());
        }
        (Some(inherited), _) => inherited,
        (None, Some(own)) => own,
        (None, None) => return Ok(None),
    };
    governor(ctx, policy_id, "policy_id", diags).await.map(Some).ok_or(())
}

/// What an in-place update of a resource that takes its policy from what it uses does to its
/// governance: `inherited` is that thing's policy (`None` inside: ungoverned; `None` outside:
/// not known). It follows an inherited policy, refuses another named one, and for a resource
/// of ungoverned things whose own `policy_id` changes returns the governed move and the
/// policies it answers to. `Err` when refused (reported).
pub async fn inherited_move(
    ctx: &Ctx,
    (action, resource_type, what): (Action, &str, &str),
    inherited: Option<Option<String>>,
    (id, prior): (&str, &GovernanceModel),
    planned: &mut GovernanceModel,
    diags: &mut Diagnostics,
) -> Result<Option<(Change, Vec<Governor>)>, ()> {
    match inherited {
        None => Ok(None),
        Some(Some(policy)) => {
            if follow_inherited(Some(&policy), prior, planned, what, diags) {
                Ok(None)
            } else {
                Err(())
            }
        }
        Some(None) => {
            let Some(change) = move_change(action, resource_type, id, prior, planned) else {
                return Ok(None);
            };
            let governors = update_governors(ctx, prior, planned, diags).await.ok_or(())?;
            Ok((!governors.is_empty()).then_some((change, governors)))
        }
    }
}

/// Keeps the governance values of the last governed change: a plan that makes no governed
/// change carries `change_digest`, `approval_status` and `audit_head` over.
pub fn keep(prior: &ChangeModel, planned: &mut ChangeModel) {
    planned.change_digest = prior.change_digest.clone();
    planned.approval_status = prior.approval_status.clone();
    planned.audit_head = prior.audit_head.clone();
}

/// Marks a planned resource ungoverned (no policy governs it).
pub fn ungoverned(planned: &mut ChangeModel) {
    planned.change_digest = Tf::Null;
    planned.approval_status = Tf::Null;
    planned.audit_head = Tf::Null;
}

/// Marks the governance values of a planned change unknown (what it governs is not known
/// yet, or the governing policy is not known yet).
pub fn unknown(planned: &mut ChangeModel) {
    planned.change_digest = Tf::Unknown;
    planned.approval_status = Tf::Unknown;
    planned.audit_head = Tf::Unknown;
}

/// How `change` stands under `governors`: the first is the authority (the digest names it and
/// it must have a rule for the action); later ones (a new policy, the policy a resource moves
/// to) must be met too when they have a rule for it.
struct Standing {
    digest: String,
    statuses: Vec<ApprovalStatus>,
}

/// The digest of `change` under the authority (the first governor): its occurrence leaves
/// out the entries this run wrote (`written`).
fn digest_of(log: &VerifiedLog, written: &BTreeSet<u64>, governors: &[Governor], change: &Change) -> String {
    let authority = &governors[0].policy;
    let occurrence = log.occurrences(change, &authority.digest(), written);
    change.digest(&authority.digest(), occurrence)
}

fn standing(
    governors: &[Governor],
    change: &Change,
    digest: String,
    approvals: &[Approval],
) -> Result<Standing, GovernanceError> {
    let mut statuses = Vec::new();
    for (index, governor) in governors.iter().enumerate() {
        if index > 0 && governor.policy.rule(change.action).is_none() {
            continue;
        }
        statuses.push(evaluate(&governor.policy, change.action, &digest, approvals)?);
    }
    Ok(Standing { digest, statuses })
}

fn summary(governors: &[Governor], statuses: &[ApprovalStatus]) -> String {
    match statuses {
        [only] => only.summary(),
        many => many
            .iter()
            .zip(governors)
            .enumerate()
            .map(|(i, (s, g))| {
                let role = if i == 0 { "in force" } else { "new" };
                format!("policy {} ({role}): {}", g.policy.name(), s.summary())
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn rule_text(status: &ApprovalStatus) -> String {
    format!("rule: {} of role {}", status.threshold, status.roles.join(" or "))
}

/// Plans the governed `change` under `governors`: sets `change_digest`, marks
/// `approval_status` and `audit_head` unknown, and warns when approvals are short.
pub async fn plan(
    ctx: &Ctx,
    planned: &mut ChangeModel,
    governors: &[Governor],
    change: Change,
    diags: &mut Diagnostics,
) {
    unknown(planned);
    let Some(log) = audit_log(ctx, diags).await else { return };
    let written = run(ctx).written.clone();
    let digest = digest_of(&log, &written, governors, &change);
    let approvals = collect_approvals(ctx, planned, &digest, diags).await;
    match standing(governors, &change, digest, &approvals) {
        Ok(Standing { digest, statuses }) => {
            expiry_diagnostics(&governors[0].policy, change.action, diags);
            let status = summary(governors, &statuses);
            match statuses.iter().find(|s| !s.satisfied()) {
                Some(short) => diags.warning(
                    format!("Approvals missing for {}", change.action),
                    format!(
                        "Change digest {digest}: {status} ({}). Apply will refuse until it is approved; approvals given after `terraform plan -out` count when that saved plan is applied. {}",
                        rule_text(short),
                        how_to_sign(ctx, change.action, &digest, short)
                    ),
                ),
                None => diags.warning(
                    format!("Approvals in place for {}", change.action),
                    format!("Change digest {digest}: {status}. Apply checks them again."),
                ),
            }
            planned.change_digest = Tf::string(digest);
        }
        Err(e) => no_rule(&e, diags),
    }
}

/// Plans a governed change under `governor` while what it governs is not known yet (an input
/// made in the same run): everything it would set is unknown, and a policy with no rule for
/// `action` is refused now, since it could never approve the change whatever it turns out to be.
pub fn pending(planned: &mut ChangeModel, governor: &Governor, action: Action, diags: &mut Diagnostics) {
    unknown(planned);
    governor.require_rule(action, diags);
}

fn no_rule(e: &GovernanceError, diags: &mut Diagnostics) {
    diags.error_at(
        AttributePath::attr_root("policy_id"),
        "No rule for this change",
        format!("{e}."),
    );
}

/// At plan, before the change itself is known (what it uses is created in the same run): a
/// known `policy_id` whose policy has no rule for `action` fails closed now, at `policy_id`,
/// rather than at apply after the rest was built.
pub async fn require_rule(ctx: &Ctx, policy_id: &Tf<String>, action: Action, diags: &mut Diagnostics) {
    let Some(id) = policy_id.as_deref() else { return };
    if let Some(governor) = governor(ctx, id, "policy_id", diags).await {
        governor.require_rule(action, diags);
    }
}

impl Governor {
    /// Reports at `policy_id` when this policy has no rule for `action`: a governed change it
    /// cannot approve is refused at plan, even while the change itself is not known yet.
    pub fn require_rule(&self, action: Action, diags: &mut Diagnostics) {
        if self.policy.rule(action).is_none() {
            let e = GovernanceError::NoRule {
                policy: self.policy.name().to_owned(),
                action,
            };
            no_rule(&e, diags);
        }
    }
}

/// A governed change that may be made: the audit entry to append once it is. While it lives,
/// no other governed change of this process is authorised.
#[derive(Debug)]
pub struct Authorization {
    entry: AuditEntry,
    status: String,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// Why creating a resource cannot be authorised yet: a diagnostic's summary and detail naming
/// what must be known at apply.
pub type UnknownAtApply = (&'static str, &'static str);

/// Authorises creating a resource right before it is made: `change` (`Ok(None)` when the
/// creation is not a governed action, `Err` when it is not known at apply) under `governor`,
/// when there is one. Fills the resource's `governance` to match: the governor's policy id, and
/// no change values when nothing is governed. `Err` when refused or unknown (diagnosed).
pub async fn authorize_create(
    ctx: &Ctx,
    governor: Option<&Governor>,
    change: Result<Option<Change>, UnknownAtApply>,
    governance: &mut GovernanceModel,
    diags: &mut Diagnostics,
) -> Result<Option<Authorization>, ()> {
    governance.policy_id = governor.map(|g| g.policy_id.clone()).into();
    match (governor, change) {
        (Some(governor), Ok(Some(change))) => {
            authorize(ctx, &governance.change, std::slice::from_ref(governor), &change, diags)
                .await
                .map(Some)
                .ok_or(())
        }
        (Some(_), Err((summary, detail))) => {
            diags.error(summary, detail);
            Err(())
        }
        (None, _) | (Some(_), Ok(None)) => {
            ungoverned(&mut governance.change);
            Ok(None)
        }
    }
}

/// Refuses `change` unless its approvals meet every governor's rule, its digest is the one
/// planned (`planned.change_digest`, when known) and no earlier change used it. Call it right
/// before making the change.
pub async fn authorize(
    ctx: &Ctx,
    planned: &ChangeModel,
    governors: &[Governor],
    change: &Change,
    diags: &mut Diagnostics,
) -> Option<Authorization> {
    // One governed change at a time: the next one sees this one's entry in the log.
    let turn = Arc::clone(&ctx.configured.governed).lock_owned().await;
    let log = audit_log(ctx, diags).await?;
    let written = run(ctx).written.clone();
    let digest = digest_of(&log, &written, governors, change);
    let approvals = collect_approvals(ctx, planned, &digest, diags).await;
    let Standing { digest, statuses } = match standing(governors, change, digest, &approvals) {
        Ok(standing) => standing,
        Err(e) => {
            diags.error_at(
                AttributePath::attr_root("policy_id"),
                "No rule for this change",
                format!("{e}."),
            );
            return None;
        }
    };
    if let Some(planned) = planned.change_digest.as_deref() {
        if planned != digest {
            diags.error(
                "The change differs from the plan",
                format!("The plan showed change digest {planned}, but applying it now gives {digest} (the policy, an input or the audit log changed since). Nothing was changed; run terraform plan again and collect approvals for the new digest."),
            );
            return None;
        }
    }
    if let Some(used) = log.consumed(&digest) {
        diags.error(
            format!("{} was approved for another change", change.action),
            format!(
                "Change digest {digest} was already enforced (audit log entry {}, {} {} at {}). An approval authorises one change of one resource, once; identical resources in one apply share a digest, so the second is refused. Run terraform plan again: it shows a new digest to sign.",
                used.sequence, used.resource_type, used.resource_id, used.time
            ),
        );
        return None;
    }
    expiry_diagnostics(&governors[0].policy, change.action, diags);
    if diags.has_errors() {
        return None;
    }
    let status = summary(governors, &statuses);
    if let Some(short) = statuses.iter().find(|s| !s.satisfied()) {
        diags.error(
            format!("{} is not approved", change.action),
            format!(
                "Refusing {} with change digest {digest}: {status} ({} in policy {:?}). Signed by: {}. {}",
                change.action,
                rule_text(short),
                governors[0].policy.name(),
                if short.counted.is_empty() {
                    "nobody".to_owned()
                } else {
                    short.counted.join(", ")
                },
                how_to_sign(ctx, change.action, &digest, short)
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
    let occurrence = log.occurrences(change, &governors[0].policy.digest(), &written);
    Some(Authorization {
        _turn: turn,
        status,
        entry: AuditEntry {
            sequence: 0,
            time: rfc3339_ms(now_ms()),
            action: change.action.as_str().to_owned(),
            resource_type: change.resource_type.clone(),
            resource_id: String::new(),
            subject: change.subject.clone(),
            from: change.from.clone(),
            to: change.to.clone(),
            occurrence: Some(occurrence),
            change_digest: digest,
            policy_digest: governors[0].policy.digest(),
            policy_document: governors[0].policy.document(),
            new_policy_document: None,
            approvals: used,
            previous: None,
            entry_sha256: String::new(),
        },
    })
}

impl Authorization {
    /// For `policy.update`: the policy the change puts in force.
    #[must_use]
    pub fn introducing(mut self, policy: &Policy) -> Self {
        self.entry.new_policy_document = Some(policy.document());
        self
    }
}

/// Appends `entry` for `resource_id` and returns the head after it; reports failures.
async fn append(ctx: &Ctx, mut entry: AuditEntry, resource_id: &str, diags: &mut Diagnostics) -> Option<AuditHead> {
    entry.resource_id = resource_id.to_owned();
    let floor = run(ctx).floor.clone();
    match ctx.configured.store.append_audit(entry, floor.as_ref()).await {
        Ok(head) => {
            let mut run = run(ctx);
            run.written.insert(head.sequence);
            run.floor = Some(head.clone());
            Some(head)
        }
        Err(e) => {
            diags.error(
                "Cannot write the audit log",
                format!("The change was made but could not be logged: {e}."),
            );
            None
        }
    }
}

/// Records an authorised change of `resource_id` once it is made, and sets the state's
/// `change_digest`, `approval_status` and `audit_head`.
pub async fn record(
    ctx: &Ctx,
    authorization: Authorization,
    resource_id: &str,
    state: &mut ChangeModel,
    diags: &mut Diagnostics,
) {
    let digest = authorization.entry.change_digest.clone();
    if let Some(head) = append(ctx, authorization.entry, resource_id, diags).await {
        state.change_digest = Tf::string(digest);
        state.approval_status = Tf::string(authorization.status);
        state.audit_head = Tf::string(head.to_string());
    }
}

/// Records an event of the log's own, made with [`AuditEntry::record`], at this time;
/// returns the head after it.
pub async fn record_event(ctx: &Ctx, mut entry: AuditEntry, diags: &mut Diagnostics) -> Option<AuditHead> {
    entry.time = rfc3339_ms(now_ms());
    let resource_id = entry.resource_id.clone();
    append(ctx, entry, &resource_id, diags).await
}

/// Records the destruction of a governed resource under the policy that governed it (best
/// effort: a destroy is never blocked by its own log entry; a failure is a warning).
pub async fn record_destroy(
    ctx: &Ctx,
    (resource_type, id): (&str, &str),
    prior: &GovernanceModel,
    diags: &mut Diagnostics,
) {
    let Some(policy_id) = prior.policy_id.as_deref() else {
        return;
    };
    let mut quiet = Diagnostics::default();
    let recorded = match governor(ctx, policy_id, "policy_id", &mut quiet).await {
        Some(governor) => {
            let to = attributes_digest(&serde_json::json!({ "deleted": id }));
            let entry = AuditEntry::record(
                safebox::govern::audit::RESOURCE_DELETE,
                resource_type,
                id,
                &governor.policy,
                None,
                to,
            );
            record_event(ctx, entry, &mut quiet).await.is_some()
        }
        None => false,
    };
    if !recorded {
        let reasons: Vec<String> = quiet.as_slice().iter().map(|d| d.detail.clone()).collect();
        diags.warning(
            "Destroy not logged",
            format!(
                "{resource_type} {id} was destroyed, but its destruction could not be written to the audit log: {}",
                reasons.join(" ")
            ),
        );
    }
}
