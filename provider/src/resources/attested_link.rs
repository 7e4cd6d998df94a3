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

use crate::boxes::{self, attest, pcrs_of, pcrs_value, BoxFacts};
use crate::clock::{now_ms, rfc3339_ms};
use crate::config::attestation_root;
use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, PlanModifier, Schema};
use crate::framework::types::Type;
use crate::framework::validators::{not_blank, pcr_map};
use crate::framework::value::Value;
use crate::governance::{self, attributes_digest, Change, Governor, PolicySource};
use crate::record;
use crate::resource::{Ctx, Resource};

/// `status` of a link both of whose boxes still attest.
const ESTABLISHED: &str = "established";
/// The two sides: label, enclave id attribute, expected PCRs attribute.
const SIDES: [(&str, &str, &str); 2] = [
    ("a", "a_enclave_id", "a_expected_pcrs"),
    ("b", "b_enclave_id", "b_expected_pcrs"),
];

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
        let replace = PlanModifier::RequiresReplace;
        let mut attributes = vec![
            Attribute::computed("id", Type::String)
                .describe("The link's id; import by it.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::required("a_enclave_id", Type::String).describe("One side: a `safebox_enclave`.").validate(not_blank()).modify(replace),
            Attribute::required("b_enclave_id", Type::String).describe("The other side, another box.").validate(not_blank()).modify(replace),
            Attribute::optional_computed("a_expected_pcrs", Type::map(Type::String))
                .modify(PlanModifier::UseStateForUnknown)
                .describe("PCRs side A must attest to. Default: PCR0 to PCR2 as side A attested them at deployment.")
                .validate(pcr_map())
                .modify(replace),
            Attribute::optional_computed("b_expected_pcrs", Type::map(Type::String))
                .modify(PlanModifier::UseStateForUnknown)
                .describe("PCRs side B must attest to. Default: as side B attested them at deployment.")
                .validate(pcr_map())
                .modify(replace),
            Attribute::computed("binding_sha256", Type::String)
                .describe("SHA-256 of the canonical JSON of both documents' digests and both sides' public keys; both boxes report it.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::computed("a_attestation_sha256", Type::String)
                .describe("SHA-256 of the document side A proved itself with.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::computed("b_attestation_sha256", Type::String)
                .describe("SHA-256 of the document side B proved itself with.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::computed("established_at", Type::String).describe("When the link was made.").modify(PlanModifier::UseStateForUnknown),
            Attribute::computed("status", Type::String)
                .describe("`established`, or why a side no longer attests (which replaces the link).")
                .modify(replace),
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

fn link_change(value: &Value) -> Option<Change> {
    let (a, b) = (value.get("a_expected_pcrs"), value.get("b_expected_pcrs"));
    if !a.is_fully_known() || !b.is_fully_known() || a.is_null() || b.is_null() {
        return None;
    }
    Some(Change::create(
        Action::LinkCreate,
        "safebox_attested_link",
        attributes_digest(&serde_json::json!({"a_expected_pcrs": a.to_json(), "b_expected_pcrs": b.to_json()})),
    ))
}

/// Both sides' boxes, when both exist; `None` otherwise (reported in `diags`).
async fn sides_of(ctx: &Ctx, value: &Value, diags: &mut Diagnostics) -> Option<(BoxFacts, BoxFacts)> {
    let mut found = Vec::new();
    for (_, attribute, _) in SIDES {
        let id = value.get(attribute).as_str()?;
        found.push(boxes::facts(ctx, id, attribute, diags).await?);
    }
    let b = found.pop()?;
    let a = found.pop()?;
    Some((a, b))
}

/// The policy governing a link between `a` and `b`: theirs (one policy for both), which an
/// explicit `policy_id` may only repeat; else the link's own. Errors at `policy_id`.
async fn governor_of(
    ctx: &Ctx,
    value: &Value,
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
    let own = value.get("policy_id").as_str();
    let policy_id = match (inherited, own) {
        (Some(inherited), Some(own)) if inherited != own => {
            diags.error_at(
                at(),
                "A link takes its boxes' policy",
                format!("The linked boxes are governed by policy {inherited}, so the link is governed by it too; policy_id names {own}. Remove policy_id, or set it to the boxes' policy."),
            );
            return Err(());
        }
        (Some(inherited), _) => inherited,
        (None, Some(own)) => own.to_owned(),
        (None, None) => return Ok(None),
    };
    governance::governor(ctx, &policy_id, "policy_id", diags)
        .await
        .map(Some)
        .ok_or(())
}

/// What an in-place update does to the link's governance: it follows its boxes' policy, and a
/// link of ungoverned boxes moving to another policy is governed by the one it leaves.
async fn moved(
    ctx: &Ctx,
    prior: &Value,
    planned: &mut Value,
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
        prior,
        planned,
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

#[async_trait::async_trait]
impl Resource for AttestedLinkResource {
    fn type_name(&self) -> &'static str {
        "safebox_attested_link"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        if let (Some(a), Some(b)) = (config.get("a_enclave_id").as_str(), config.get("b_enclave_id").as_str()) {
            if a == b {
                diags.error_at(
                    AttributePath::attr_root("b_enclave_id"),
                    "A link needs two boxes",
                    "a_enclave_id and b_enclave_id name the same enclave; link two different boxes.",
                );
            }
        }
    }

    async fn plan(&self, ctx: &Ctx, prior: &Value, planned: &mut Value, diags: &mut Diagnostics) {
        if let Err(reason) = crate::config::attestation_trust_check(&ctx.configured) {
            diags.error("Attestation cannot be verified", format!("{reason}."));
            return;
        }
        self.validate(planned, diags);
        planned.set("status", Value::string(ESTABLISHED));
        if !prior.is_null() {
            governance::check_anchor(ctx, prior, diags).await;
            governance::keep(prior, planned);
            if let Ok(Some((change, governors))) = moved(ctx, prior, planned, diags).await {
                governance::plan(ctx, planned, &governors, Some(change), diags).await;
            }
            return;
        }
        let mut quiet = Diagnostics::default();
        let Some((a, b)) = sides_of(ctx, planned, &mut quiet).await else {
            if planned.get("policy_id").is_null() {
                planned.set("policy_id", Value::Unknown);
            }
            governance::unknown(planned);
            return;
        };
        for ((_, _, pcrs), side) in SIDES.iter().zip([&a, &b]) {
            if planned.get(pcrs).is_unknown() {
                planned.set(pcrs, pcrs_value(&side.attested));
            }
        }
        let Ok(governor) = governor_of(ctx, planned, &a, &b, diags).await else {
            return;
        };
        match governor {
            Some(governor) => {
                planned.set("policy_id", Value::string(&governor.policy_id));
                let change = link_change(planned);
                governance::plan(ctx, planned, &[governor], change, diags).await;
            }
            None => {
                planned.set("policy_id", Value::Null);
                governance::ungoverned(planned);
            }
        }
    }

    async fn create(&self, ctx: &Ctx, planned: &Value, _config: &Value, diags: &mut Diagnostics) -> Value {
        self.validate(planned, diags);
        if diags.has_errors() {
            return Value::Null;
        }
        let Some((a, b)) = sides_of(ctx, planned, diags).await else {
            return Value::Null;
        };
        let mut state = planned.clone();
        for ((_, _, pcrs), side) in SIDES.iter().zip([&a, &b]) {
            if state.get(pcrs).is_unknown() || state.get(pcrs).is_null() {
                state.set(pcrs, pcrs_value(&side.attested));
            }
        }
        let Ok(governor) = governor_of(ctx, &state, &a, &b, diags).await else {
            return Value::Null;
        };
        let authorization = match &governor {
            Some(governor) => {
                state.set("policy_id", Value::string(&governor.policy_id));
                let Some(change) = link_change(&state) else {
                    diags.error(
                        "Link unknown at apply",
                        "a_expected_pcrs and b_expected_pcrs must be known when the link is created.",
                    );
                    return Value::Null;
                };
                let Some(authorization) =
                    governance::authorize(ctx, &state, std::slice::from_ref(governor), &change, diags).await
                else {
                    return Value::Null;
                };
                Some(authorization)
            }
            None => {
                state.set("policy_id", Value::Null);
                governance::ungoverned(&mut state);
                None
            }
        };
        let id = new_record_id("lnk");
        let (a_expected, b_expected) = (
            pcrs_of(state.get("a_expected_pcrs")),
            pcrs_of(state.get("b_expected_pcrs")),
        );
        let sides = match tokio::task::block_in_place(|| establish(ctx, &id, &a, &b, [&a_expected, &b_expected])) {
            Ok(sides) => sides,
            Err(reason) => {
                diags.error(
                    "Mutual attestation failed",
                    format!("{reason}. No key was shared; both boxes dropped what they had for this link."),
                );
                return Value::Null;
            }
        };
        state.set("id", Value::string(&id));
        state.set("binding_sha256", Value::string(sides.binding_sha256()));
        state.set("a_attestation_sha256", Value::string(&sides.a_document_sha256));
        state.set("b_attestation_sha256", Value::string(&sides.b_document_sha256));
        state.set("established_at", Value::string(rfc3339_ms(now_ms())));
        state.set("status", Value::string(ESTABLISHED));
        if let Some(authorization) = authorization {
            governance::record(ctx, authorization, &id, &mut state, diags).await;
        }
        if !diags.has_errors() {
            record::create(ctx, RecordKind::Link, &id, &state, diags).await;
        }
        if diags.has_errors() {
            tokio::task::block_in_place(|| drop_keys(ctx, &[&a, &b], &id));
            return Value::Null;
        }
        state
    }

    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value {
        let Some(id) = state.get("id").as_str().map(str::to_owned) else {
            return Value::Null;
        };
        governance::check_anchor(ctx, state, diags).await;
        let Some(mut stored) =
            record::load_checked(ctx, self.records(), &id, state, diags).await
        else {
            return Value::Null;
        };
        let binding = stored.get("binding_sha256").as_str().unwrap_or_default().to_owned();
        let mut problems = Vec::new();
        for (label, enclave, pcrs) in SIDES {
            let enclave_id = stored.get(enclave).as_str().unwrap_or_default().to_owned();
            let mut quiet = Diagnostics::default();
            let Some(side) = boxes::facts(ctx, &enclave_id, enclave, &mut quiet).await else {
                problems.push(format!("side {label}: its enclave is gone"));
                continue;
            };
            let expected = pcrs_of(stored.get(pcrs));
            let checked = tokio::task::block_in_place(|| -> Result<(), String> {
                link::check_held(&boxes::agent(ctx, &side)?, &id, &binding)?;
                attest(ctx, &side.endpoint, &expected).map(|_| ())
            });
            if let Err(reason) = checked {
                problems.push(format!("side {label}: {reason}"));
            }
        }
        stored.set(
            "status",
            Value::string(if problems.is_empty() {
                ESTABLISHED.to_owned()
            } else {
                problems.join("; ")
            }),
        );
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
        // Every argument replaces the link; only its policy changes in place (a move is
        // governed by the policy the link leaves).
        let mut planned = planned.clone();
        let authorization = match moved(ctx, prior, &mut planned, diags).await {
            Err(()) => return prior.clone(),
            Ok(Some((change, governors))) => {
                match governance::authorize(ctx, &planned, &governors, &change, diags).await {
                    Some(authorization) => Some(authorization),
                    None => return prior.clone(),
                }
            }
            Ok(None) => None,
        };
        let Some(id) = prior.get("id").as_str() else {
            return prior.clone();
        };
        match authorization {
            Some(authorization) => governance::record(ctx, authorization, id, &mut planned, diags).await,
            None => governance::keep(prior, &mut planned),
        }
        if diags.has_errors() {
            return prior.clone();
        }
        record::store_update(ctx, self.records(), prior, &planned, diags).await
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) {
        let Some(id) = prior.get("id").as_str() else { return };
        let mut quiet = Diagnostics::default();
        let mut sides = Vec::new();
        for (_, attribute, _) in SIDES {
            if let Some(side) = boxes::facts(
                ctx,
                prior.get(attribute).as_str().unwrap_or_default(),
                attribute,
                &mut quiet,
            )
            .await
            {
                sides.push(side);
            }
        }
        tokio::task::block_in_place(|| drop_keys(ctx, &sides.iter().collect::<Vec<_>>(), id));
        record::remove(ctx, RecordKind::Link, id, diags).await;
        governance::record_destroy(ctx, prior, "safebox_attested_link", diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Value {
        record::import(ctx, RecordKind::Link, id, &self.schema, diags).await
    }
}
