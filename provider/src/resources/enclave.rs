//! `safebox_enclave`: a box launched from an approved image and trusted only after its
//! attestation document verifies.
//!
//! Apply checks the image artifact against its published digest, boots the box, asks its agent
//! for a document bound to a fresh random nonce, and verifies it (trust root, chain, nonce,
//! age, and PCRs equal to both `expected_pcrs` and the image's measurements). Anything short of
//! that stops the box and fails the apply, saying why. Refresh re-attests; a box that stopped
//! or whose PCRs changed shows in `status` and is replaced.

use std::collections::BTreeMap;
use std::time::Duration;

use safebox::agent_api::AgentClient;
use safebox::attest::verify::{verify, Policy};
use safebox::cloud::{new_record_id, BoxSpec, Placement, RecordKind};

use crate::config::attestation_root;
use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, PlanModifier, Schema, Validator};
use crate::framework::timeouts::{timeout, timeouts_block};
use crate::framework::types::Type;
use crate::framework::validators::{http_url, not_blank, one_of};
use crate::framework::value::Value;
use crate::governance::{self, Change};
use crate::resource::{Ctx, Resource};
use crate::resources::record;
use safebox::govern::approval::attributes_digest;
use safebox::govern::Action;

/// `status` of a box whose latest document verified.
const ATTESTED: &str = "attested";
/// How long creating a box may take unless `timeouts.create` says otherwise.
const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one request to an agent may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `safebox_enclave` resource.
pub struct EnclaveResource {
    schema: Schema,
}

impl Default for EnclaveResource {
    fn default() -> Self {
        Self::new()
    }
}

/// Validates a map of PCR index to SHA-384 hex.
pub fn pcr_map() -> Validator {
    std::sync::Arc::new(|value: &Value| {
        for (index, pcr) in value.as_map().into_iter().flatten() {
            if index.parse::<u8>().map_or(true, |i| i > 31) {
                return Err(format!("has key {index:?}; keys are PCR indexes from \"0\" to \"31\""));
            }
            let hex_ok = pcr
                .as_str()
                .is_some_and(|h| h.len() == 96 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !hex_ok {
                return Err(format!("[{index:?}] must be a SHA-384 PCR value: 96 hex digits"));
            }
        }
        Ok(())
    })
}

fn attestation_type() -> Type {
    Type::object([
        ("document_sha256", Type::String),
        ("module_id", Type::String),
        ("pcrs", Type::map(Type::String)),
        ("public_key", Type::String),
        ("verified_at", Type::String),
        ("simulated", Type::Bool),
    ])
}

impl EnclaveResource {
    /// The resource with its schema.
    #[must_use]
    pub fn new() -> Self {
        let replace = PlanModifier::RequiresReplace;
        let mut attributes = vec![
            Attribute::computed("id", Type::String)
                .describe("The box's id in the backend; import by it.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::required("image_id", Type::String)
                .describe("The `safebox_image` to boot.")
                .validate(not_blank())
                .modify(replace),
            Attribute::with_default("variant", Type::String, Value::string("prod"))
                .describe("Which image to boot: `prod` (default) or `dev` (with SSH; never for real data).")
                .validate(one_of(&["prod", "dev"]))
                .modify(replace),
            Attribute::optional_computed("expected_pcrs", Type::map(Type::String))
                .describe("PCR index to expected value (hex). Default: the image variant's PCR0, PCR1 and PCR2. The box's document must match these and the image's measurements.")
                .validate(pcr_map())
                .modify(replace),
            Attribute::with_default("cpu_count", Type::Number, Value::int(2)).describe("vCPUs for the enclave.").modify(replace),
            Attribute::with_default("memory_mib", Type::Number, Value::int(1024))
                .describe("Memory for the enclave, MiB.")
                .modify(replace),
            Attribute::optional("instance_type", Type::String).describe("aws backend: the EC2 instance type.").modify(replace),
            Attribute::optional("subnet_id", Type::String).describe("aws backend: the subnet.").modify(replace),
            Attribute::optional("security_group_ids", Type::list(Type::String))
                .describe("aws backend: security groups.")
                .modify(replace),
            Attribute::optional("iam_instance_profile", Type::String)
                .describe("aws backend: the instance profile.")
                .modify(replace),
            Attribute::optional("attestation_endpoint", Type::String)
                .describe("aws backend: where the box's agent answers (`http://HOST:PORT`). Default `http://<private IP>:8443`.")
                .validate(http_url("http://10.0.1.5:8443"))
                .modify(replace),
            Attribute::computed("endpoint", Type::String)
                .describe("Where the box's agent answers.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::computed("instance_id", Type::String)
                .describe("The backend's id for the box.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::computed("attestation", attestation_type())
                .describe("The verified document: `document_sha256`, `module_id`, `pcrs`, `public_key` (hex), `verified_at`, `simulated`.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::computed("status", Type::String)
                .describe("`attested`, or why the latest re-attestation failed (which replaces the box).")
                .modify(replace),
        ];
        attributes.extend(governance::attributes());
        let block = Block::new(attributes)
            .with_blocks(vec![timeouts_block(&["create", "delete"])])
            .describe("A box booted from an approved image, trusted only once its attestation document verifies.");
        Self {
            schema: Schema { version: 0, block },
        }
    }
}

/// The image record `image_id` points at, with the artifact and measurements of `variant`.
struct ImageFacts {
    expected: safebox::cloud::ExpectedArtifacts,
    artifact: String,
    image_sha256: String,
    pcrs: BTreeMap<u32, String>,
}

async fn image_facts(ctx: &Ctx, image_id: &str, variant: &str, diags: &mut Diagnostics) -> Option<ImageFacts> {
    let schema = super::image::ImageResource::new();
    let image = record::load_referenced(
        ctx,
        RecordKind::Image,
        image_id,
        crate::resource::Resource::schema(&schema),
        "image_id",
        "safebox_image",
        diags,
    )
    .await?;
    let m = image.get(&format!("{variant}_measurements"));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    // A provider working in a region the image was copied to launches from the copy.
    let copy = ctx
        .configured
        .cloud
        .region()
        .map(|region| image.get("regional_amis").get(region))
        .filter(|copy| !copy.is_null());
    let artifact = [format!("{variant}_artifact"), format!("{variant}_ami_id")]
        .iter()
        .find_map(|name| copy.unwrap_or(&image).get(name).as_str().map(str::to_owned))
        .unwrap_or_default();
    Some(ImageFacts {
        expected: super::image::expected_artifacts(&image),
        artifact,
        image_sha256: text(m.get("image_sha256")),
        pcrs: [
            (0, text(m.get("pcr0"))),
            (1, text(m.get("pcr1"))),
            (2, text(m.get("pcr2"))),
        ]
        .into(),
    })
}

/// A map of PCR index to hex, as a value.
pub fn pcrs_value(pcrs: &BTreeMap<u32, String>) -> Value {
    Value::Map(pcrs.iter().map(|(i, v)| (i.to_string(), Value::string(v))).collect())
}

/// PCR index to lower-case hex, from a map value.
pub fn pcrs_of(value: &Value) -> BTreeMap<u32, String> {
    value
        .as_map()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_ascii_lowercase())))
        .collect()
}

/// The governed change of deploying the box planned in `value`: what runs (the PCRs it must
/// attest to) and with what resources.
fn deploy_change(value: &Value, image: Option<&ImageFacts>) -> Option<Change> {
    let configured = value.get("expected_pcrs");
    if !configured.is_fully_known() {
        return None;
    }
    // What will run: the image's own digest and PCRs, plus what the configuration adds. The
    // digest names the image itself, so an approval cannot be carried over to another one.
    let image = image?;
    let mut expected = image.pcrs.clone();
    expected.extend(pcrs_of(configured));
    Some(Change {
        action: Action::EnclaveDeploy,
        resource_type: "safebox_enclave",
        from: None,
        to: attributes_digest(&serde_json::json!({
            "image_sha256": image.image_sha256,
            "variant": value.get("variant").as_str(),
            "expected_pcrs": pcrs_value(&expected).to_json(),
            "cpu_count": value.get("cpu_count").as_i64(),
            "memory_mib": value.get("memory_mib").as_i64(),
        })),
    })
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Fetches a document for a fresh nonce from `endpoint` and verifies it; returns the
/// `attestation` value.
pub(crate) fn attest(ctx: &Ctx, endpoint: &str, expected: &BTreeMap<u32, String>) -> Result<Value, String> {
    let (root, simulated) = attestation_root(&ctx.configured)?;
    let client = AgentClient::new(endpoint, AGENT_TIMEOUT).map_err(|e| e.to_string())?;
    let nonce: [u8; 32] = rand::random();
    let document = client.attestation(&nonce, None, None).map_err(|e| e.to_string())?;
    let expected_pcrs = expected
        .iter()
        .map(|(i, v)| {
            hex::decode(v)
                .map(|b| (*i, b))
                .map_err(|_| format!("expected PCR{i} is not hex"))
        })
        .collect::<Result<_, _>>()?;
    let at_ms = now_ms();
    let policy = Policy {
        root: &root,
        at_ms,
        expected_pcrs,
        nonce: Some(nonce.to_vec()),
        max_age_ms: Some(u64::try_from(ctx.configured.attestation.max_age.as_millis()).unwrap_or(u64::MAX)),
        allow_debug: false,
    };
    let verified = verify(&document, &policy, None).map_err(|e| e.to_string())?;
    let doc = verified.document;
    Ok(Value::object([
        ("document_sha256", Value::string(verified.document_sha256)),
        ("module_id", Value::string(doc.module_id)),
        (
            "pcrs",
            Value::Map(
                doc.pcrs
                    .iter()
                    .map(|(i, v)| (i.to_string(), Value::string(hex::encode(v))))
                    .collect(),
            ),
        ),
        (
            "public_key",
            Value::string(doc.public_key.as_deref().map(hex::encode).unwrap_or_default()),
        ),
        ("verified_at", Value::string(crate::resources::rfc3339_ms(at_ms))),
        ("simulated", Value::Bool(simulated)),
    ]))
}

/// The cloud placement the planned box asks for.
fn placement_of(planned: &Value) -> Placement {
    let text = |name| planned.get(name).as_str().map(str::to_owned);
    Placement {
        instance_type: text("instance_type"),
        subnet_id: text("subnet_id"),
        security_group_ids: planned
            .get("security_group_ids")
            .as_list()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        iam_instance_profile: text("iam_instance_profile"),
        attestation_endpoint: text("attestation_endpoint"),
    }
}

#[async_trait::async_trait]
impl Resource for EnclaveResource {
    fn type_name(&self) -> &'static str {
        "safebox_enclave"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn plan(&self, ctx: &Ctx, prior: &Value, planned: &mut Value, diags: &mut Diagnostics) {
        if let Err(reason) = crate::config::attestation_trust_check(&ctx.configured) {
            diags.error("Attestation cannot be verified", format!("{reason}."));
            return;
        }
        if ctx.configured.cloud.name() == "local" && ctx.configured.attestation.trust_root.is_none() {
            diags.warning(
                "Simulated attestation",
                "This box runs on the local backend: its attestation document is signed by a software root generated on this machine (attestation.simulated = true). It shows the flow end to end but proves nothing about hardware; use the aws backend for real data.",
            );
        }
        if ctx.configured.cloud.name() == "local" {
            for aws_only in [
                "instance_type",
                "subnet_id",
                "security_group_ids",
                "iam_instance_profile",
                "attestation_endpoint",
            ] {
                if !planned.get(aws_only).is_null() {
                    diags.warning(
                        format!("{aws_only} is ignored"),
                        format!("{aws_only} applies to the aws backend only; the local backend ignores it."),
                    );
                }
            }
        }
        planned.set("status", Value::string(ATTESTED));
        if !prior.is_null() {
            // Not a deployment: what was approved stands.
            governance::keep_approval(prior, planned);
            return;
        }
        // The image, when it already exists: its measurements are the default expected PCRs
        // and what a deployment approval names.
        let mut facts = None;
        if let (Some(image_id), Some(variant)) = (planned.get("image_id").as_str(), planned.get("variant").as_str()) {
            let mut quiet = Diagnostics::default();
            facts = image_facts(ctx, image_id, variant, &mut quiet).await;
        }
        if planned.get("expected_pcrs").is_unknown() {
            if let Some(facts) = &facts {
                planned.set("expected_pcrs", pcrs_value(&facts.pcrs));
            }
        }
        let change = deploy_change(planned, facts.as_ref());
        governance::plan(ctx, planned, change, diags).await;
    }

    async fn create(&self, ctx: &Ctx, planned: &Value, config: &Value, diags: &mut Diagnostics) -> Value {
        let image_id = planned.get("image_id").as_str().unwrap_or_default().to_owned();
        let variant = planned.get("variant").as_str().unwrap_or("prod").to_owned();
        let Some(facts) = image_facts(ctx, &image_id, &variant, diags).await else {
            return Value::Null;
        };
        // Fail closed on an image that changed or went missing since it was published.
        let cloud = &ctx.configured.cloud;
        let checked = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(cloud.check_image(&image_id, &facts.expected))
        });
        match checked {
            Ok(problems) if problems.is_empty() => {}
            Ok(problems) => {
                diags.error_at(
                    AttributePath::attr_root("image_id"),
                    "Image artifact tampered with",
                    format!("{}. No box was started. Replace the image (terraform apply -replace=...) or restore what changed.", problems.join("; ")),
                );
                return Value::Null;
            }
            Err(e) => {
                diags.error_at(
                    AttributePath::attr_root("image_id"),
                    "Image artifact unreadable",
                    format!("{e}. No box was started."),
                );
                return Value::Null;
            }
        }
        let mut expected = facts.pcrs.clone();
        let configured = pcrs_of(config.get("expected_pcrs"));
        for (index, value) in &configured {
            if let Some(measured) = expected.get(index) {
                if measured != value {
                    diags.error_at(
                        AttributePath::attr_root("expected_pcrs").key(&index.to_string()),
                        "Expected PCR differs from the image",
                        format!("expected_pcrs[\"{index}\"] is {value}, but the {variant} image measures {measured}. No box was started: a box of this image could never attest to that value."),
                    );
                    return Value::Null;
                }
            }
            expected.insert(*index, value.clone());
        }
        // The deployment as it will run: configured PCRs, or the image's.
        let mut deployed = planned.clone();
        if configured.is_empty() {
            deployed.set("expected_pcrs", pcrs_value(&facts.pcrs));
        }
        let approved = match (
            planned.get("policy_id").as_str(),
            deploy_change(&deployed, Some(&facts)),
        ) {
            (Some(policy_id), Some(change)) => {
                let Some(policy) = governance::load_policy(ctx, policy_id, diags).await else {
                    return Value::Null;
                };
                let Some(entry) = governance::enforce(ctx, &deployed, &[policy], &change, diags) else {
                    return Value::Null;
                };
                Some(entry)
            }
            _ => None,
        };
        let id = new_record_id("box");
        let spec = BoxSpec {
            artifact: facts.artifact.clone(),
            cpu_count: u32::try_from(planned.get("cpu_count").as_i64().unwrap_or(2)).unwrap_or(2),
            memory_mib: u32::try_from(planned.get("memory_mib").as_i64().unwrap_or(1024)).unwrap_or(1024),
            placement: placement_of(planned),
            // The backend stops waiting for the box after timeouts.create.
            start_timeout: timeout(planned, "create", DEFAULT_CREATE_TIMEOUT),
        };
        let launched =
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(cloud.launch_box(&id, &spec)));
        let instance = match launched {
            Ok(instance) => instance,
            Err(e) => {
                let _ = cloud.terminate_box(&id).await;
                diags.error("The box did not start", format!("{e}; it was stopped."));
                return Value::Null;
            }
        };
        let attestation = match tokio::task::block_in_place(|| attest(ctx, &instance.endpoint, &expected)) {
            Ok(attestation) => attestation,
            Err(reason) => {
                let _ = cloud.terminate_box(&id).await;
                diags.error("Attestation failed: the box was stopped", format!("The box's attestation document did not verify: {reason}. Nothing trusts this box; it was stopped."));
                return Value::Null;
            }
        };
        let mut state = deployed;
        state.set("id", Value::string(&id));
        state.set("endpoint", Value::string(&instance.endpoint));
        state.set("instance_id", Value::string(&instance.instance_id));
        state.set("attestation", attestation);
        state.set("status", Value::string(ATTESTED));
        if state.get("change_digest").is_unknown() {
            // Governed with PCRs unknown at plan: record what was enforced.
            let (digest, status) = approved.as_ref().map_or((Value::Null, Value::Null), |e| {
                let signers: Vec<&str> = e.approvals.iter().map(|a| a.signer.as_str()).collect();
                (
                    Value::string(&e.change_digest),
                    Value::string(format!("approved by {}", signers.join(", "))),
                )
            });
            state.set("change_digest", digest);
            state.set("approval_status", status);
        }
        record::store(ctx, RecordKind::Enclave, &id, &state, diags).await;
        if diags.has_errors() {
            let _ = cloud.terminate_box(&id).await;
            return Value::Null;
        }
        if let Some(entry) = approved {
            governance::record_change(ctx, entry, &id, diags).await;
        }
        state
    }

    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value {
        let Some(id) = state.get("id").as_str() else {
            return Value::Null;
        };
        let Some(mut stored) = record::load(ctx, RecordKind::Enclave, id, &self.schema, diags).await else {
            return Value::Null;
        };
        let status = match ctx.configured.cloud.find_box(id).await {
            Ok(None) => "stopped: the box is not running".to_owned(),
            Ok(Some(instance)) => {
                let endpoint = stored
                    .get("attestation_endpoint")
                    .as_str()
                    .map_or(instance.endpoint, str::to_owned);
                // What the box proved at apply (PCR0 to PCR2 of its image), and what the
                // configuration expects on top.
                let mut expected: BTreeMap<u32, String> = pcrs_of(stored.get("attestation").get("pcrs"))
                    .into_iter()
                    .filter(|(i, _)| *i <= 2)
                    .collect();
                expected.extend(pcrs_of(stored.get("expected_pcrs")));
                match tokio::task::block_in_place(|| attest(ctx, &endpoint, &expected)) {
                    Ok(_) => ATTESTED.to_owned(),
                    Err(reason) => format!("re-attestation failed: {reason}"),
                }
            }
            Err(e) => {
                diags.error("Cannot find the box", format!("{e}."));
                return stored;
            }
        };
        stored.set("status", Value::string(status));
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
        // Every argument replaces the box; only the timeouts can change in place.
        record::store_update(ctx, RecordKind::Enclave, prior, planned, diags).await
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) {
        let Some(id) = prior.get("id").as_str() else { return };
        if let Err(e) = ctx.configured.cloud.terminate_box(id).await {
            diags.error("Cannot stop the box", format!("{e}."));
            return;
        }
        record::remove(ctx, RecordKind::Enclave, id, diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Value {
        record::import(ctx, RecordKind::Enclave, id, &self.schema, diags).await
    }
}
