//! `safebox_attested_link`: mutual attestation between two boxes.
//!
//! Apply has each box's agent fetch the other's attestation document with its own fresh nonce
//! and verify it against the other side's expected PCRs; the provider verifies both documents
//! too. Then both agents derive the link key (ECDH of their per-boot keys, bound to both
//! document digests), which never leaves them; the provider only learns the binding both sides
//! report, and checks it against its own computation. Refresh re-attests both boxes; a box
//! that stopped or changed replaces the link. Destroy tells both agents to drop the key.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use safebox::agent_api::{AgentClient, EstablishRequest, PeerRequest};
use safebox::attest::verify::{verify, Policy};
use safebox::cloud::{new_record_id, RecordKind};
use safebox::govern::approval::attributes_digest;
use safebox::govern::Action;
use safebox::link::LinkSides;

use crate::config::attestation_root;
use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, PlanModifier, Schema};
use crate::framework::types::Type;
use crate::framework::validators::not_blank;
use crate::framework::value::Value;
use crate::governance::{self, Change};
use crate::resource::{Ctx, Resource};
use crate::resources::enclave::{pcr_map, pcrs_of, pcrs_value};
use crate::resources::record;

/// `status` of a link both of whose boxes still attest.
const ESTABLISHED: &str = "established";
/// How long one request to an agent may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// The resource with its schema.
    #[must_use]
    pub fn new() -> Self {
        let replace = PlanModifier::RequiresReplace;
        let mut attributes = vec![
            Attribute::computed("id", Type::String)
                .describe("The link's id; import by it.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::required("a_enclave_id", Type::String).describe("One side: a `safebox_enclave`.").validate(not_blank()).modify(replace),
            Attribute::required("b_enclave_id", Type::String).describe("The other side.").validate(not_blank()).modify(replace),
            Attribute::optional_computed("a_expected_pcrs", Type::map(Type::String))
                .describe("PCRs side A must attest to. Default: PCR0 to PCR2 as side A attested them at deployment.")
                .validate(pcr_map())
                .modify(replace),
            Attribute::optional_computed("b_expected_pcrs", Type::map(Type::String))
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
        attributes.extend(governance::attributes());
        Self {
            schema: Schema {
                version: 0,
                block: Block::new(attributes).describe("Mutual attestation between two boxes: each proves what it runs to the other before a key is shared."),
            },
        }
    }
}

/// The endpoint and deployed PCRs of the enclave `id`.
struct Side {
    endpoint: String,
    attested: BTreeMap<u32, String>,
}

async fn side(ctx: &Ctx, attribute: &str, id: &str, diags: &mut Diagnostics) -> Option<Side> {
    let schema = super::enclave::EnclaveResource::new();
    let state = record::load_referenced(
        ctx,
        RecordKind::Enclave,
        id,
        crate::resource::Resource::schema(&schema),
        attribute,
        "safebox_enclave",
        diags,
    )
    .await?;
    Some(Side {
        endpoint: state.get("endpoint").as_str().unwrap_or_default().to_owned(),
        attested: pcrs_of(state.get("attestation").get("pcrs"))
            .into_iter()
            .filter(|(i, _)| *i <= 2)
            .collect(),
    })
}

fn link_change(value: &Value) -> Option<Change> {
    let (a, b) = (value.get("a_expected_pcrs"), value.get("b_expected_pcrs"));
    if !a.is_fully_known() || !b.is_fully_known() || a.is_null() || b.is_null() {
        return None;
    }
    Some(Change {
        action: Action::LinkCreate,
        resource_type: "safebox_attested_link",
        from: None,
        to: attributes_digest(&serde_json::json!({"a_expected_pcrs": a.to_json(), "b_expected_pcrs": b.to_json()})),
    })
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Runs the mutual attestation between `a` and `b` for link `id`. Errors name the side.
fn establish(
    ctx: &Ctx,
    id: &str,
    a: &Side,
    b: &Side,
    a_expected: &BTreeMap<u32, String>,
    b_expected: &BTreeMap<u32, String>,
) -> Result<LinkSides, String> {
    let (root, _) = attestation_root(&ctx.configured)?;
    let max_age_ms = u64::try_from(ctx.configured.attestation.max_age.as_millis()).unwrap_or(u64::MAX);
    let client_a = AgentClient::new(&a.endpoint, AGENT_TIMEOUT).map_err(|e| format!("side a: {e}"))?;
    let client_b = AgentClient::new(&b.endpoint, AGENT_TIMEOUT).map_err(|e| format!("side b: {e}"))?;
    // A verifies B, B verifies A, each with its own nonce.
    let b_seen_by_a = client_a
        .link_peer(
            id,
            &PeerRequest {
                peer_endpoint: b.endpoint.clone(),
                expected_pcrs: b_expected.clone(),
                max_age_ms,
            },
        )
        .map_err(|e| format!("side b failed side a's check: {e}"))?;
    let a_seen_by_b = client_b
        .link_peer(
            id,
            &PeerRequest {
                peer_endpoint: a.endpoint.clone(),
                expected_pcrs: a_expected.clone(),
                max_age_ms,
            },
        )
        .map_err(|e| format!("side a failed side b's check: {e}"))?;
    // The provider checks both documents itself, against the same expectations.
    let check = |label: &str,
                 seen: &safebox::agent_api::PeerResponse,
                 expected: &BTreeMap<u32, String>|
     -> Result<(String, String), String> {
        let document = base64::engine::general_purpose::STANDARD
            .decode(&seen.peer_document)
            .map_err(|e| format!("side {label}: the document is not base64 ({e})"))?;
        let policy = Policy {
            root: &root,
            at_ms: now_ms(),
            expected_pcrs: expected
                .iter()
                .map(|(i, v)| (*i, hex::decode(v).unwrap_or_default()))
                .collect(),
            nonce: Some(hex::decode(&seen.nonce).map_err(|_| format!("side {label}: the nonce is not hex"))?),
            max_age_ms: Some(max_age_ms),
            allow_debug: false,
        };
        let verified = verify(&document, &policy, None).map_err(|e| format!("side {label}: {e}"))?;
        let key = verified
            .document
            .public_key
            .as_deref()
            .map(hex::encode)
            .ok_or(format!("side {label}: its document binds no public key"))?;
        Ok((verified.document_sha256, key))
    };
    let (b_digest, b_key) = check("b", &b_seen_by_a, b_expected)?;
    let (a_digest, a_key) = check("a", &a_seen_by_b, a_expected)?;
    let sides = LinkSides {
        a_document_sha256: a_digest.clone(),
        b_document_sha256: b_digest.clone(),
        a_public_key: a_key,
        b_public_key: b_key,
    };
    let request = |side: &str| EstablishRequest {
        side: side.to_owned(),
        a_document_sha256: a_digest.clone(),
        b_document_sha256: b_digest.clone(),
    };
    let from_a = client_a
        .link_establish(id, &request("a"))
        .map_err(|e| format!("side a: {e}"))?;
    let from_b = client_b
        .link_establish(id, &request("b"))
        .map_err(|e| format!("side b: {e}"))?;
    let expected = sides.binding_sha256();
    for (label, reported) in [("a", &from_a.binding_sha256), ("b", &from_b.binding_sha256)] {
        if *reported != expected {
            return Err(format!(
                "side {label} reports binding {reported}, but the verified documents give {expected}"
            ));
        }
    }
    Ok(sides)
}

fn drop_keys(a: Option<&Side>, b: Option<&Side>, id: &str) {
    for side in [a, b].into_iter().flatten() {
        if let Ok(client) = AgentClient::new(&side.endpoint, AGENT_TIMEOUT) {
            let _ = client.link_delete(id);
        }
    }
}

#[async_trait::async_trait]
impl Resource for AttestedLinkResource {
    fn type_name(&self) -> &'static str {
        "safebox_attested_link"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn plan(&self, ctx: &Ctx, prior: &Value, planned: &mut Value, diags: &mut Diagnostics) {
        if let Err(reason) = crate::config::attestation_trust_check(&ctx.configured) {
            diags.error("Attestation cannot be verified", format!("{reason}."));
            return;
        }
        planned.set("status", Value::string(ESTABLISHED));
        if !prior.is_null() {
            governance::keep_approval(prior, planned);
            return;
        }
        for (attribute, pcrs) in [("a_enclave_id", "a_expected_pcrs"), ("b_enclave_id", "b_expected_pcrs")] {
            if planned.get(pcrs).is_unknown() {
                if let Some(id) = planned.get(attribute).as_str() {
                    let mut quiet = Diagnostics::default();
                    if let Some(side) = side(ctx, attribute, id, &mut quiet).await {
                        planned.set(pcrs, pcrs_value(&side.attested));
                    }
                }
            }
        }
        governance::plan(ctx, planned, link_change(planned), diags).await;
    }

    async fn create(&self, ctx: &Ctx, planned: &Value, _config: &Value, diags: &mut Diagnostics) -> Value {
        let a_id = planned.get("a_enclave_id").as_str().unwrap_or_default().to_owned();
        let b_id = planned.get("b_enclave_id").as_str().unwrap_or_default().to_owned();
        if a_id == b_id {
            diags.error_at(
                AttributePath::attr_root("b_enclave_id"),
                "A link needs two boxes",
                "a_enclave_id and b_enclave_id name the same enclave; link two different boxes.",
            );
            return Value::Null;
        }
        let (Some(a), Some(b)) = (
            side(ctx, "a_enclave_id", &a_id, diags).await,
            side(ctx, "b_enclave_id", &b_id, diags).await,
        ) else {
            return Value::Null;
        };
        let mut state = planned.clone();
        for (pcrs, side) in [("a_expected_pcrs", &a), ("b_expected_pcrs", &b)] {
            if state.get(pcrs).is_unknown() || state.get(pcrs).is_null() {
                state.set(pcrs, pcrs_value(&side.attested));
            }
        }
        let approved = match (planned.get("policy_id").as_str(), link_change(&state)) {
            (Some(policy_id), Some(change)) => {
                let Some(policy) = governance::load_policy(ctx, policy_id, diags).await else {
                    return Value::Null;
                };
                let Some(entry) = governance::enforce(ctx, &state, &[policy], &change, diags) else {
                    return Value::Null;
                };
                Some(entry)
            }
            _ => None,
        };
        let id = new_record_id("lnk");
        let (a_expected, b_expected) = (
            pcrs_of(state.get("a_expected_pcrs")),
            pcrs_of(state.get("b_expected_pcrs")),
        );
        let sides = match tokio::task::block_in_place(|| establish(ctx, &id, &a, &b, &a_expected, &b_expected)) {
            Ok(sides) => sides,
            Err(reason) => {
                tokio::task::block_in_place(|| drop_keys(Some(&a), Some(&b), &id));
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
        state.set("established_at", Value::string(crate::resources::rfc3339_ms(now_ms())));
        state.set("status", Value::string(ESTABLISHED));
        if state.get("change_digest").is_unknown() {
            state.set(
                "change_digest",
                approved
                    .as_ref()
                    .map_or(Value::Null, |e| Value::string(&e.change_digest)),
            );
            state.set(
                "approval_status",
                approved
                    .as_ref()
                    .map_or(Value::Null, |_| Value::string("approved at apply")),
            );
        }
        record::store(ctx, RecordKind::Link, &id, &state, diags).await;
        if diags.has_errors() {
            tokio::task::block_in_place(|| drop_keys(Some(&a), Some(&b), &id));
            return Value::Null;
        }
        if let Some(entry) = approved {
            governance::record_change(ctx, entry, &id, diags).await;
        }
        state
    }

    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value {
        let Some(id) = state.get("id").as_str().map(str::to_owned) else {
            return Value::Null;
        };
        let Some(mut stored) = record::load(ctx, RecordKind::Link, &id, &self.schema, diags).await else {
            return Value::Null;
        };
        let binding = stored.get("binding_sha256").as_str().unwrap_or_default().to_owned();
        let mut problems = Vec::new();
        for (label, enclave, pcrs) in [
            ("a", "a_enclave_id", "a_expected_pcrs"),
            ("b", "b_enclave_id", "b_expected_pcrs"),
        ] {
            let enclave_id = stored.get(enclave).as_str().unwrap_or_default().to_owned();
            let mut quiet = Diagnostics::default();
            let Some(side) = side(ctx, enclave, &enclave_id, &mut quiet).await else {
                problems.push(format!("side {label}: its enclave is gone"));
                continue;
            };
            let expected = pcrs_of(stored.get(pcrs));
            let checked = tokio::task::block_in_place(|| -> Result<(), String> {
                let client = AgentClient::new(&side.endpoint, AGENT_TIMEOUT).map_err(|e| e.to_string())?;
                match client.link_status(&id).map_err(|e| e.to_string())? {
                    Some(link) if link.binding_sha256 == binding => {}
                    Some(_) => return Err("it holds another binding for this link".into()),
                    None => return Err("it no longer holds this link's key".into()),
                }
                super::enclave::attest(ctx, &side.endpoint, &expected).map(|_| ())
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
        // Every argument replaces the link; only governance bookkeeping changes in place.
        record::store_update(ctx, RecordKind::Link, prior, planned, diags).await
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) {
        let Some(id) = prior.get("id").as_str() else { return };
        let mut quiet = Diagnostics::default();
        let a = side(
            ctx,
            "a_enclave_id",
            prior.get("a_enclave_id").as_str().unwrap_or_default(),
            &mut quiet,
        )
        .await;
        let b = side(
            ctx,
            "b_enclave_id",
            prior.get("b_enclave_id").as_str().unwrap_or_default(),
            &mut quiet,
        )
        .await;
        tokio::task::block_in_place(|| drop_keys(a.as_ref(), b.as_ref(), id));
        record::remove(ctx, RecordKind::Link, id, diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Value {
        record::import(ctx, RecordKind::Link, id, &self.schema, diags).await
    }
}
