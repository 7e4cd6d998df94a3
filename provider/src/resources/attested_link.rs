//! `safebox_attested_link`: mutual attestation between two boxes.
//!
//! The resource orchestrates; the protocol is the core's (`safebox::link::establish`): each
//! box's agent fetches the other's document with its own fresh nonce and verifies it against
//! the other side's expected PCRs, the provider verifies both documents too, and both agents
//! derive the link key (ECDH of their per-boot keys, bound to both document digests), which
//! never leaves them. Every request to an agent is signed with that box's key. Refresh
//! re-attests both boxes and asks each whether it still holds the link; a box that stopped or
//! changed replaces the link. Destroy tells both agents to drop the key.
//!
//! A link between governed boxes is governed by their policy (`link.create`).

use std::collections::BTreeMap;

use safebox::cloud::{new_record_id, RecordKind};
use safebox::govern::Action;
use safebox::link::{self, LinkSides, Side, Verification};

use crate::boxes::{self, attest, pcrs_map, pcrs_of, BoxFacts};
use crate::clock::{now_ms, rfc3339_ms};
use crate::config::attestation_root;
use crate::framework::diag::Diagnostics;
use crate::framework::model::{StringMap, Tf};
use crate::framework::modifiers::{requires_replace, use_state_for_unknown};
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, Schema};
use crate::framework::types::Type;
use crate::framework::validators::{not_blank, pcr_map};
use crate::governance::{self, attributes_digest, Change, GovernanceModel, Governor, PolicySource};
use crate::record;
use crate::resource::{Ctx, Resource};

/// `status` of a link both of whose boxes still attest.
const ESTABLISHED: &str = "established";

crate::model! {
    /// A `safebox_attested_link`.
    pub struct LinkModel {
        /// The link's id.
        id: Tf<String>,
        /// One side's box.
        a_enclave_id: Tf<String>,
        /// The other side's box.
        b_enclave_id: Tf<String>,
        /// PCRs side A must attest to.
        a_expected_pcrs: StringMap,
        /// PCRs side B must attest to.
        b_expected_pcrs: StringMap,
        /// Binds both documents and keys.
        binding_sha256: Tf<String>,
        /// Side A's document.
        a_attestation_sha256: Tf<String>,
        /// Side B's document.
        b_attestation_sha256: Tf<String>,
        /// When the link was made.
        established_at: Tf<String>,
        /// `established`, or why not any more.
        status: Tf<String>,
    }
    embed {
        /// Its governance.
        governance: GovernanceModel,
    }
}

/// One side of a link as its model holds it.
struct SideOf<'a> {
    /// `a` or `b`.
    label: &'static str,
    /// The attribute naming its box.
    attribute: &'static str,
    /// Its box.
    enclave_id: &'a Tf<String>,
    /// What it must attest to.
    expected: &'a StringMap,
}

impl LinkModel {
    fn sides(&self) -> [SideOf<'_>; 2] {
        [
            SideOf {
                label: "a",
                attribute: "a_enclave_id",
                enclave_id: &self.a_enclave_id,
                expected: &self.a_expected_pcrs,
            },
            SideOf {
                label: "b",
                attribute: "b_enclave_id",
                enclave_id: &self.b_enclave_id,
                expected: &self.b_expected_pcrs,
            },
        ]
    }
}

/// The `safebox_attested_link` resource.
pub struct AttestedLinkResource {
    schema: Schema,
}

impl Default for AttestedLinkResource {
    fn default() -> Self {
        Self::new()
    }
}

impl AttestedLinkResource {
    /// Its records, and the attributes refresh recomputes (which a record may hold older).
    fn records(&self) -> record::Records<'_> {
        record::Records {
            kind: RecordKind::Link,
            schema: &self.schema,
            live: &["status"],
        }
    }

    /// The resource with its schema.
    #[must_use]
    pub fn new() -> Self {
        let replace = requires_replace;
        let mut attributes = vec![
            Attribute::computed("id", Type::String)
                .describe("The link's id; import by it.")
                .modify(use_state_for_unknown()),
            Attribute::required("a_enclave_id", Type::String).describe("One side: a `safebox_enclave`.").validate(not_blank()).modify(replace()),
            Attribute::required("b_enclave_id", Type::String).describe("The other side, another box.").validate(not_blank()).modify(replace()),
            Attribute::optional_computed("a_expected_pcrs", Type::map(Type::String))
                .modify(use_state_for_unknown())
                .describe("PCRs side A must attest to. Default: PCR0 to PCR2 as side A attested them at deployment.")
                .validate(pcr_map())
                .modify(replace()),
            Attribute::optional_computed("b_expected_pcrs", Type::map(Type::String))
                .modify(use_state_for_unknown())
                .describe("PCRs side B must attest to. Default: as side B attested them at deployment.")
                .validate(pcr_map())
                .modify(replace()),
            Attribute::computed("binding_sha256", Type::String)
                .describe("SHA-256 of the canonical JSON of both documents' digests and both sides' public keys; both boxes report it.")
                .modify(use_state_for_unknown()),
            Attribute::computed("a_attestation_sha256", Type::String)
                .describe("SHA-256 of the document side A proved itself with.")
                .modify(use_state_for_unknown()),
            Attribute::computed("b_attestation_sha256", Type::String)
                .describe("SHA-256 of the document side B proved itself with.")
                .modify(use_state_for_unknown()),
            Attribute::computed("established_at", Type::String).describe("When the link was made.").modify(use_state_for_unknown()),
            Attribute::computed("status", Type::String)
                .describe("`established`, or why a side no longer attests (which replaces the link).")
                .modify(replace()),
        ];
        attributes.extend(governance::attributes(PolicySource::Inherited));
        Self {
            schema: Schema {
                version: 0,
                block: Block::new(attributes).describe("Mutual attestation between two boxes: each proves what it runs to the other before a key is shared."),
            },
        }
    }
}

fn link_change(value: &LinkModel) -> Option<Change> {
    let (a, b) = (value.a_expected_pcrs.entries()?, value.b_expected_pcrs.entries()?);
    Some(Change::create(
        Action::LinkCreate,
        "safebox_attested_link",
        attributes_digest(&serde_json::json!({"a_expected_pcrs": a, "b_expected_pcrs": b})),
    ))
}

/// Both sides' boxes, when both exist; `None` otherwise (reported in `diags`).
async fn sides_of(ctx: &Ctx, value: &LinkModel, diags: &mut Diagnostics) -> Option<(BoxFacts, BoxFacts)> {
    let mut found = Vec::new();
    for side in value.sides() {
        let id = side.enclave_id.as_deref()?;
        found.push(boxes::facts(ctx, id, side.attribute, diags).await?);
    }
    let b = found.pop()?;
    let a = found.pop()?;
    Some((a, b))
}

/// The policy governing a link between `a` and `b`: theirs (one policy for both), which an
/// explicit `policy_id` may only repeat; else the link's own. Errors at `policy_id`.
async fn governor_of(
    ctx: &Ctx,
    value: &LinkModel,
    a: &BoxFacts,
    b: &BoxFacts,
    diags: &mut Diagnostics,
) -> Result<Option<Governor>, ()> {
    let at = || AttributePath::attr_root("policy_id");
    let inherited = match (&a.policy_id, &b.policy_id) {
        (Some(x), Some(y)) if x != y => {
            diags.error_at(
                at(),
                "The boxes are governed by different policies",
                format!("Side a is governed by policy {x} and side b by policy {y}; a link between them would need both, which is not supported. Govern both boxes' images by one policy."),
            );
            return Err(());
        }
        (Some(x), _) | (None, Some(x)) => Some(x.clone()),
        (None, None) => None,
    };
    governance::inherited_governor(ctx, inherited.as_deref(), &value.governance, ("link", "boxes'"), diags).await
}

/// What an in-place update does to the link's governance: it follows its boxes' policy, and a
/// link of ungoverned boxes moving to another policy is governed by the one it leaves.
async fn moved(
    ctx: &Ctx,
    prior: &LinkModel,
    planned: &mut LinkModel,
    diags: &mut Diagnostics,
) -> Result<Option<(Change, Vec<Governor>)>, ()> {
    let mut quiet = Diagnostics::default();
    let inherited = sides_of(ctx, prior, &mut quiet)
        .await
        .map(|(a, b)| a.policy_id.or(b.policy_id));
    governance::inherited_move(
        ctx,
        (Action::LinkCreate, "safebox_attested_link", "link"),
        inherited,
        (prior.id.as_deref().unwrap_or_default(), &prior.governance),
        &mut planned.governance,
        diags,
    )
    .await
}

/// Runs the mutual attestation of link `id`.
fn establish(
    ctx: &Ctx,
    id: &str,
    a: &BoxFacts,
    b: &BoxFacts,
    expected: [&BTreeMap<u32, String>; 2],
) -> Result<LinkSides, String> {
    let (root, _) = attestation_root(&ctx.configured)?;
    let agent_a = boxes::agent(ctx, a).map_err(|e| format!("side a: {e}"))?;
    let agent_b = boxes::agent(ctx, b).map_err(|e| format!("side b: {e}"))?;
    let how = Verification {
        root: &root,
        max_age_ms: u64::try_from(ctx.configured.attestation.max_age.as_millis()).unwrap_or(u64::MAX),
        now_ms: now_ms(),
    };
    let established = link::establish(
        id,
        &Side {
            label: "a",
            agent: &agent_a,
            endpoint: &a.endpoint,
            expected_pcrs: expected[0],
        },
        &Side {
            label: "b",
            agent: &agent_b,
            endpoint: &b.endpoint,
            expected_pcrs: expected[1],
        },
        &how,
    );
    if established.is_err() {
        link::drop_link(id, &[&agent_a, &agent_b]);
    }
    established.map_err(|e| e.to_string())
}

/// Has both boxes drop link `id` (a box that stopped, or whose key is gone, holds nothing).
fn drop_keys(ctx: &Ctx, sides: &[&BoxFacts], id: &str) {
    let agents: Vec<_> = sides.iter().filter_map(|side| boxes::agent(ctx, side).ok()).collect();
    link::drop_link(id, &agents.iter().collect::<Vec<_>>());
}

/// The link `planned` when it is ready to establish: its expected PCRs default to what each
/// side attested at deployment.
fn with_expected(planned: &LinkModel, a: &BoxFacts, b: &BoxFacts) -> LinkModel {
    let mut state = planned.clone();
    for (expected, side) in [(&mut state.a_expected_pcrs, a), (&mut state.b_expected_pcrs, b)] {
        if !matches!(expected, Tf::Known(_)) {
            *expected = pcrs_map(&side.attested);
        }
    }
    state
}

#[async_trait::async_trait]
impl Resource for AttestedLinkResource {
    type Model = LinkModel;

    fn type_name(&self) -> &'static str {
        "safebox_attested_link"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn validate(&self, config: &LinkModel, diags: &mut Diagnostics) {
        if let (Some(a), Some(b)) = (config.a_enclave_id.as_deref(), config.b_enclave_id.as_deref()) {
            if a == b {
                diags.error_at(
                    AttributePath::attr_root("b_enclave_id"),
                    "A link needs two boxes",
                    "a_enclave_id and b_enclave_id name the same enclave; link two different boxes.",
                );
            }
        }
    }

    async fn plan(
        &self,
        ctx: &Ctx,
        prior: Option<&LinkModel>,
        planned: &mut LinkModel,
        diags: &mut Diagnostics,
    ) -> Vec<AttributePath> {
        if let Err(reason) = crate::config::attestation_trust_check(&ctx.configured) {
            diags.error("Attestation cannot be verified", format!("{reason}."));
            return Vec::new();
        }
        self.validate(planned, diags);
        planned.status = Tf::string(ESTABLISHED);
        if let Some(prior) = prior {
            governance::check_anchor(ctx, &prior.governance.change, diags).await;
            governance::keep(&prior.governance.change, &mut planned.governance.change);
            if let Ok(Some((change, governors))) = moved(ctx, prior, planned, diags).await {
                governance::plan(ctx, &mut planned.governance.change, &governors, change, diags).await;
            }
            return Vec::new();
        }
        let mut quiet = Diagnostics::default();
        let Some((a, b)) = sides_of(ctx, planned, &mut quiet).await else {
            // Boxes created in this run: governed at apply, but a policy without a rule for
            // links fails now.
            governance::require_rule(ctx, &planned.governance.policy_id, Action::LinkCreate, diags).await;
            if planned.governance.policy_id.is_null() {
                planned.governance.policy_id = Tf::Unknown;
            }
            governance::unknown(&mut planned.governance.change);
            return Vec::new();
        };
        for (expected, side) in [(&mut planned.a_expected_pcrs, &a), (&mut planned.b_expected_pcrs, &b)] {
            if expected.is_unknown() {
                *expected = pcrs_map(&side.attested);
            }
        }
        let Ok(governor) = governor_of(ctx, planned, &a, &b, diags).await else {
            return Vec::new();
        };
        match governor {
            Some(governor) => {
                planned.governance.policy_id = Tf::string(&governor.policy_id);
                match link_change(planned) {
                    Some(change) => {
                        governance::plan(ctx, &mut planned.governance.change, &[governor], change, diags).await;
                    }
                    None => governance::pending(&mut planned.governance.change, &governor, Action::LinkCreate, diags),
                }
            }
            None => {
                planned.governance.policy_id = Tf::Null;
                governance::ungoverned(&mut planned.governance.change);
            }
        }
        Vec::new()
    }

    async fn create(
        &self,
        ctx: &Ctx,
        planned: &LinkModel,
        _config: &LinkModel,
        diags: &mut Diagnostics,
    ) -> Option<LinkModel> {
        self.validate(planned, diags);
        if diags.has_errors() {
            return None;
        }
        let (a, b) = sides_of(ctx, planned, diags).await?;
        let mut state = with_expected(planned, &a, &b);
        let governor = governor_of(ctx, &state, &a, &b, diags).await.ok()?;
        let change = link_change(&state).map(Some).ok_or((
            "Link unknown at apply",
            "a_expected_pcrs and b_expected_pcrs must be known when the link is created.",
        ));
        let authorization = governance::authorize_create(ctx, governor.as_ref(), change, &mut state.governance, diags)
            .await
            .ok()?;
        let id = new_record_id("lnk");
        let (a_expected, b_expected) = (pcrs_of(&state.a_expected_pcrs), pcrs_of(&state.b_expected_pcrs));
        let sides = match tokio::task::block_in_place(|| establish(ctx, &id, &a, &b, [&a_expected, &b_expected])) {
            Ok(sides) => sides,
            Err(reason) => {
                diags.error(
                    "Mutual attestation failed",
                    format!("{reason}. No key was shared; both boxes dropped what they had for this link."),
                );
                return None;
            }
        };
        state.id = Tf::string(&id);
        state.binding_sha256 = Tf::string(sides.binding_sha256());
        state.a_attestation_sha256 = Tf::string(&sides.a_document_sha256);
        state.b_attestation_sha256 = Tf::string(&sides.b_document_sha256);
        state.established_at = Tf::string(rfc3339_ms(now_ms()));
        state.status = Tf::string(ESTABLISHED);
        if let Some(authorization) = authorization {
            governance::record(ctx, authorization, &id, &mut state.governance.change, diags).await;
        }
        if !diags.has_errors() {
            record::create(ctx, RecordKind::Link, &id, &state, diags).await;
        }
        if diags.has_errors() {
            tokio::task::block_in_place(|| drop_keys(ctx, &[&a, &b], &id));
            return None;
        }
        Some(state)
    }

    async fn read(&self, ctx: &Ctx, state: &LinkModel, diags: &mut Diagnostics) -> Option<LinkModel> {
        let id = state.id.as_deref()?.to_owned();
        governance::check_anchor(ctx, &state.governance.change, diags).await;
        let mut stored = record::load_checked(ctx, self.records(), &id, state, diags).await?;
        let binding = stored.binding_sha256.as_deref().unwrap_or_default().to_owned();
        let mut problems = Vec::new();
        for side in stored.sides() {
            let enclave_id = side.enclave_id.as_deref().unwrap_or_default();
            let mut quiet = Diagnostics::default();
            let Some(facts) = boxes::facts(ctx, enclave_id, side.attribute, &mut quiet).await else {
                problems.push(format!("side {}: its enclave is gone", side.label));
                continue;
            };
            let expected = pcrs_of(side.expected);
            let checked = tokio::task::block_in_place(|| -> Result<(), String> {
                link::check_held(&boxes::agent(ctx, &facts)?, &id, &binding).map_err(|e| e.to_string())?;
                attest(ctx, &facts.endpoint, &expected, facts.kind).map(|_| ())
            });
            if let Err(reason) = checked {
                problems.push(format!("side {}: {reason}", side.label));
            }
        }
        stored.status = Tf::string(if problems.is_empty() {
            ESTABLISHED.to_owned()
        } else {
            problems.join("; ")
        });
        Some(stored)
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &LinkModel,
        planned: &LinkModel,
        _config: &LinkModel,
        diags: &mut Diagnostics,
    ) -> LinkModel {
        // Every argument replaces the link; only its policy changes in place (a move is
        // governed by the policy the link leaves).
        let mut planned = planned.clone();
        let authorization = match moved(ctx, prior, &mut planned, diags).await {
            Err(()) => return prior.clone(),
            Ok(Some((change, governors))) => {
                match governance::authorize(ctx, &planned.governance.change, &governors, &change, diags).await {
                    Some(authorization) => Some(authorization),
                    None => return prior.clone(),
                }
            }
            Ok(None) => None,
        };
        let Some(id) = prior.id.as_deref() else {
            return prior.clone();
        };
        match authorization {
            Some(authorization) => {
                governance::record(ctx, authorization, id, &mut planned.governance.change, diags).await;
            }
            None => governance::keep(&prior.governance.change, &mut planned.governance.change),
        }
        if diags.has_errors() {
            return prior.clone();
        }
        record::store_update(ctx, (self.records(), id), prior, &planned, diags).await
    }

    async fn delete(&self, ctx: &Ctx, prior: &LinkModel, diags: &mut Diagnostics) {
        let Some(id) = prior.id.as_deref() else { return };
        let mut quiet = Diagnostics::default();
        let mut sides = Vec::new();
        for side in prior.sides() {
            let enclave_id = side.enclave_id.as_deref().unwrap_or_default();
            if let Some(facts) = boxes::facts(ctx, enclave_id, side.attribute, &mut quiet).await {
                sides.push(facts);
            }
        }
        tokio::task::block_in_place(|| drop_keys(ctx, &sides.iter().collect::<Vec<_>>(), id));
        record::remove(ctx, RecordKind::Link, id, diags).await;
        governance::record_destroy(ctx, ("safebox_attested_link", id), &prior.governance, diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Option<LinkModel> {
        record::import(ctx, RecordKind::Link, id, &self.schema, diags).await
    }
}
