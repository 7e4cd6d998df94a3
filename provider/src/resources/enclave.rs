//! `safebox_enclave`: a box launched from an approved image and trusted only after its
//! attestation document verifies.
//!
//! Apply checks the image artifact against its published digest, boots the box with a key of
//! its own (whose holder alone may manage the box's links), asks its agent for a document
//! bound to a fresh random nonce, and verifies it (trust root, chain, nonce, age, and PCRs
//! equal to both `expected_pcrs` and the image's measurements). Anything short of that stops
//! the box and fails the apply, saying why. Refresh checks the record against the state and
//! re-attests, requiring the same per-boot key: a box that stopped, changed PCRs, or whose
//! endpoint now leads to another agent shows in `status` and is replaced.
//!
//! A box of a governed image is governed by the image's policy (`enclave.deploy`).

use std::collections::BTreeMap;
use std::time::Duration;

use safebox::cloud::{new_record_id, BoxSpec, Placement, RecordKind};
use safebox::govern::Action;

use crate::boxes::{attest, pcrs_of, pcrs_value};
use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, PlanModifier, Schema};
use crate::framework::timeouts::{timeout, timeouts_block};
use crate::framework::types::Type;
use crate::framework::validators::{http_url, int_between, not_blank, one_of, pcr_map};
use crate::framework::value::Value;
use crate::governance::{self, attributes_digest, Change, Governor, PolicySource};
use crate::images::{self, ImageFacts};
use crate::record;
use crate::resource::{Ctx, Resource};

/// `status` of a box whose latest document verified.
const ATTESTED: &str = "attested";
/// How long creating a box may take unless `timeouts.create` says otherwise.
const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long stopping a box may take unless `timeouts.delete` says otherwise.
const DEFAULT_DELETE_TIMEOUT: Duration = Duration::from_secs(600);
/// Where in a cloud a box runs: backends that run boxes on this machine ignore them.
const PLACEMENT: [&str; 5] = [
    "instance_type",
    "subnet_id",
    "security_group_ids",
    "iam_instance_profile",
    "attestation_endpoint",
];

/// The `safebox_enclave` resource.
pub struct EnclaveResource {
    schema: Schema,
}

impl Default for EnclaveResource {
    fn default() -> Self {
        Self::new()
    }
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
    /// Its records, and the attributes refresh recomputes (which a record may hold older).
    fn records(&self) -> record::Records<'_> {
        record::Records {
            kind: RecordKind::Enclave,
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
                .modify(PlanModifier::UseStateForUnknown)
                .modify(replace),
            Attribute::with_default("cpu_count", Type::Number, Value::int(2))
                .describe("vCPUs for the enclave, 1 to 128.")
                .validate(int_between(1, 128))
                .modify(replace),
            Attribute::with_default("memory_mib", Type::Number, Value::int(1024))
                .describe("Memory for the enclave, MiB: 64 to 1048576.")
                .validate(int_between(64, 1_048_576))
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
        attributes.extend(governance::attributes(PolicySource::Inherited));
        let block = Block::new(attributes)
            .with_blocks(vec![timeouts_block(&["create", "delete"])])
            .describe("A box booted from an approved image, trusted only once its attestation document verifies.");
        Self {
            schema: Schema { version: 0, block },
        }
    }
}

/// The governed change of deploying the box planned in `value`: what runs (the image's digest
/// and the PCRs it must attest to) and with what resources.
fn deploy_change(value: &Value, image: &ImageFacts) -> Option<Change> {
    let configured = value.get("expected_pcrs");
    if !configured.is_fully_known() {
        return None;
    }
    let mut expected = image.pcrs.clone();
    expected.extend(pcrs_of(configured));
    Some(Change::create(
        Action::EnclaveDeploy,
        "safebox_enclave",
        attributes_digest(&serde_json::json!({
            "image_sha256": image.image_sha256,
            "variant": value.get("variant").as_str(),
            "expected_pcrs": pcrs_value(&expected).to_json(),
            "cpu_count": value.get("cpu_count").as_i64(),
            "memory_mib": value.get("memory_mib").as_i64(),
        })),
    ))
}

/// Checks configured `expected_pcrs` against the image; reports each contradiction at its key.
fn check_expected(configured: &BTreeMap<u32, String>, image: &ImageFacts, variant: &str, diags: &mut Diagnostics) {
    for (index, value) in configured {
        if let Some(measured) = image.pcrs.get(index).filter(|m| *m != value) {
            diags.error_at(
                AttributePath::attr_root("expected_pcrs").key(&index.to_string()),
                "Expected PCR differs from the image",
                format!("expected_pcrs[\"{index}\"] is {value}, but the {variant} image measures {measured}. A box of this image could never attest to that value: expect the image's value (safebox_image.NAME.{variant}_measurements.pcr{index}) or boot another image."),
            );
        }
    }
}

/// The policy governing a box of `image`: the image's, which an explicit `policy_id` may only
/// repeat; else the box's own. Errors at `policy_id`; `Ok(None)` for an ungoverned box.
async fn governor_of(
    ctx: &Ctx,
    planned: &Value,
    image: &ImageFacts,
    diags: &mut Diagnostics,
) -> Result<Option<Governor>, ()> {
    let own = planned.get("policy_id").as_str();
    let policy_id = match (&image.policy_id, own) {
        (Some(inherited), Some(own)) if inherited != own => {
            diags.error_at(
                AttributePath::attr_root("policy_id"),
                "A box takes its image's policy",
                format!("The image is governed by policy {inherited}, so a box of it is governed by that policy too; policy_id names {own}. Remove policy_id, or set it to the image's policy."),
            );
            return Err(());
        }
        (Some(inherited), _) => inherited.clone(),
        (None, Some(own)) => own.to_owned(),
        (None, None) => return Ok(None),
    };
    governance::governor(ctx, &policy_id, "policy_id", diags)
        .await
        .map(Some)
        .ok_or(())
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

impl EnclaveResource {
    /// What an in-place update does to the box's governance: it follows its image's policy,
    /// and a box of an ungoverned image moving to another policy is governed by the one it
    /// leaves.
    async fn moved(
        &self,
        ctx: &Ctx,
        prior: &Value,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Result<Option<(Change, Vec<Governor>)>, ()> {
        let (Some(image_id), Some(variant)) = (prior.get("image_id").as_str(), prior.get("variant").as_str()) else {
            return Ok(None);
        };
        let mut quiet = Diagnostics::default();
        let inherited = images::facts(ctx, image_id, variant, "image_id", &mut quiet)
            .await
            .map(|image| image.policy_id);
        governance::inherited_move(
            ctx,
            (Action::EnclaveDeploy, "safebox_enclave", "box"),
            inherited,
            prior,
            planned,
            diags,
        )
        .await
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
        let cloud = &ctx.configured.cloud;
        if prior.is_null() && cloud.simulated().is_some() && ctx.configured.attestation.trust_root.is_none() {
            diags.warning(
                "Simulated attestation",
                format!("This box runs on the {} backend: its attestation document is signed by a software root generated on this machine (attestation.simulated = true). It shows the flow end to end but proves nothing about hardware; use the aws backend for real data.", cloud.name()),
            );
        }
        if !cloud.places_boxes() {
            for placement in PLACEMENT {
                if !planned.get(placement).is_null() {
                    diags.warning(
                        format!("{placement} is ignored"),
                        format!("{placement} places a box in a cloud; the {} backend runs boxes on this machine and ignores it. Remove it.", cloud.name()),
                    );
                }
            }
        }
        planned.set("status", Value::string(ATTESTED));
        if !prior.is_null() {
            governance::check_anchor(ctx, prior, diags).await;
            // Not a deployment: what was approved stands, unless the box moves to another
            // policy (or the image it runs did, which it follows).
            governance::keep(prior, planned);
            if let Ok(Some((change, governors))) = self.moved(ctx, prior, planned, diags).await {
                governance::plan(ctx, planned, &governors, Some(change), diags).await;
            }
            return;
        }
        if planned.get("variant").as_str() == Some("dev") {
            diags.warning(
                "A development box",
                "variant = \"dev\" boots the development image, which has SSH: whoever holds an authorized key can read everything in the box. Never give it real data; deploy the prod variant for that.",
            );
        }
        // The image, when it already exists: its measurements are the default expected PCRs,
        // what a deployment approval names, and its policy governs the box.
        let (Some(image_id), Some(variant)) = (planned.get("image_id").as_str(), planned.get("variant").as_str())
        else {
            governance::unknown(planned);
            return;
        };
        let mut quiet = Diagnostics::default();
        let Some(image) = images::facts(ctx, image_id, variant, "image_id", &mut quiet).await else {
            // Created in this run: checked and governed at apply.
            if planned.get("policy_id").is_null() {
                planned.set("policy_id", Value::Unknown);
            }
            governance::unknown(planned);
            return;
        };
        if planned.get("expected_pcrs").is_unknown() {
            planned.set("expected_pcrs", pcrs_value(&image.pcrs));
        } else {
            check_expected(&pcrs_of(planned.get("expected_pcrs")), &image, variant, diags);
        }
        let Ok(governor) = governor_of(ctx, planned, &image, diags).await else {
            return;
        };
        match governor {
            Some(governor) => {
                planned.set("policy_id", Value::string(&governor.policy_id));
                let change = deploy_change(planned, &image);
                governance::plan(ctx, planned, &[governor], change, diags).await;
            }
            None => {
                planned.set("policy_id", Value::Null);
                governance::ungoverned(planned);
            }
        }
    }

    async fn create(&self, ctx: &Ctx, planned: &Value, config: &Value, diags: &mut Diagnostics) -> Value {
        let image_id = planned.get("image_id").as_str().unwrap_or_default().to_owned();
        let variant = planned.get("variant").as_str().unwrap_or("prod").to_owned();
        let Some(image) = images::facts(ctx, &image_id, &variant, "image_id", diags).await else {
            return Value::Null;
        };
        // Fail closed on an image that changed or went missing since it was published.
        let cloud = &ctx.configured.cloud;
        let checked = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(cloud.check_image(&image_id, &image.expected))
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
        let configured = pcrs_of(config.get("expected_pcrs"));
        check_expected(&configured, &image, &variant, diags);
        if diags.has_errors() {
            return Value::Null;
        }
        let mut expected = image.pcrs.clone();
        expected.extend(configured.clone());
        // The deployment as it will run: configured PCRs, or the image's.
        let mut state = planned.clone();
        if configured.is_empty() {
            state.set("expected_pcrs", pcrs_value(&image.pcrs));
        }
        let Ok(governor) = governor_of(ctx, &state, &image, diags).await else {
            return Value::Null;
        };
        let authorization = match &governor {
            Some(governor) => {
                state.set("policy_id", Value::string(&governor.policy_id));
                let Some(change) = deploy_change(&state, &image) else {
                    diags.error(
                        "Deployment unknown at apply",
                        "expected_pcrs must be known when the box is created.",
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
        let id = new_record_id("box");
        let key = match ctx.configured.box_keys.create(&id) {
            Ok(key) => key,
            Err(e) => {
                diags.error("Cannot keep the box's key", format!("{e}. No box was started."));
                return Value::Null;
            }
        };
        let spec = BoxSpec {
            artifact: image.artifact.clone(),
            cpu_count: u32::try_from(planned.get("cpu_count").as_i64().unwrap_or(2)).unwrap_or(2),
            memory_mib: u32::try_from(planned.get("memory_mib").as_i64().unwrap_or(1024)).unwrap_or(1024),
            placement: placement_of(planned),
            // The backend stops waiting for the box after timeouts.create.
            start_timeout: timeout(planned, "create", DEFAULT_CREATE_TIMEOUT),
            box_key: key.public_hex(),
        };
        let stop = |ctx: &Ctx, id: &str| {
            let cloud = &ctx.configured.cloud;
            let _ = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(cloud.terminate_box(id)));
            let _ = ctx.configured.box_keys.remove(id);
        };
        let launched =
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(cloud.launch_box(&id, &spec)));
        let instance = match launched {
            Ok(instance) => instance,
            Err(e) => {
                stop(ctx, &id);
                diags.error("The box did not start", format!("{e}; it was stopped."));
                return Value::Null;
            }
        };
        let attestation = match tokio::task::block_in_place(|| attest(ctx, &instance.endpoint, &expected)) {
            Ok(attestation) => attestation,
            Err(reason) => {
                stop(ctx, &id);
                diags.error("Attestation failed: the box was stopped", format!("The box's attestation document did not verify: {reason}. Nothing trusts this box; it was stopped."));
                return Value::Null;
            }
        };
        state.set("id", Value::string(&id));
        state.set("endpoint", Value::string(&instance.endpoint));
        state.set("instance_id", Value::string(&instance.instance_id));
        state.set("attestation", attestation);
        state.set("status", Value::string(ATTESTED));
        if let Some(authorization) = authorization {
            governance::record(ctx, authorization, &id, &mut state, diags).await;
        }
        if !diags.has_errors() {
            record::create(ctx, RecordKind::Enclave, &id, &state, diags).await;
        }
        if diags.has_errors() {
            stop(ctx, &id);
            return Value::Null;
        }
        state
    }

    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value {
        let Some(id) = state.get("id").as_str() else {
            return Value::Null;
        };
        governance::check_anchor(ctx, state, diags).await;
        let Some(mut stored) =
            record::load_checked(ctx, self.records(), id, state, diags).await
        else {
            return Value::Null;
        };
        let status = match ctx.configured.cloud.find_box(id).await {
            Ok(None) => "stopped: the box is not running".to_owned(),
            Ok(Some(_)) => {
                // The endpoint the record names, which links and every later call use: the
                // agent answering there must be this box's.
                let endpoint = stored.get("endpoint").as_str().unwrap_or_default().to_owned();
                // What the box proved at apply (its image's PCRs), and what the configuration
                // expects on top.
                let mut expected: BTreeMap<u32, String> = pcrs_of(stored.get("attestation").get("pcrs"))
                    .into_iter()
                    .filter(|(i, _)| *i <= 2)
                    .collect();
                expected.extend(pcrs_of(stored.get("expected_pcrs")));
                let recorded_key = stored
                    .get("attestation")
                    .get("public_key")
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                match tokio::task::block_in_place(|| attest(ctx, &endpoint, &expected)) {
                    // The same PCRs are not enough: another box of the same image has them too.
                    // Only this box's agent holds the per-boot key it attested with.
                    Ok(fresh) if fresh.get("public_key").as_str() == Some(recorded_key.as_str()) => ATTESTED.to_owned(),
                    Ok(_) => format!("re-attestation failed: the agent at {endpoint} is not this box's agent (it attests with another per-boot key)"),
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
        // Every argument replaces the box; only the timeouts and the policy change in place (a
        // move is governed by the policy the box leaves).
        let mut planned = planned.clone();
        let authorization = match self.moved(ctx, prior, &mut planned, diags).await {
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
        let limit = timeout(prior, "delete", DEFAULT_DELETE_TIMEOUT);
        match tokio::time::timeout(limit, ctx.configured.cloud.terminate_box(id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                diags.error("Cannot stop the box", format!("{e}."));
                return;
            }
            Err(_) => {
                diags.error(
                    "The box did not stop in time",
                    format!("Stopping box {id} took longer than timeouts.delete ({} s); it is still in state. Destroy again, or raise timeouts.delete.", limit.as_secs()),
                );
                return;
            }
        }
        if let Err(e) = ctx.configured.box_keys.remove(id) {
            diags.warning(
                "Box key left behind",
                format!("The box was stopped, but its key could not be removed: {e}."),
            );
        }
        record::remove(ctx, RecordKind::Enclave, id, diags).await;
        governance::record_destroy(ctx, prior, "safebox_enclave", diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Value {
        record::import(ctx, RecordKind::Enclave, id, &self.schema, diags).await
    }
}
