//! `safebox_enclave`: a box launched from an approved image and trusted only after its
//! attestation document verifies.
//!
//! Apply checks the image artifact against its published digest, boots the box with a key of
//! its own (whose holder alone may manage the box's links), asks its agent for a document
//! bound to a fresh random nonce, and verifies it (trust root, chain, nonce, age, the kind of
//! document its image's format calls for, and PCRs equal to both `expected_pcrs` and the
//! image's measurements). Anything short of that stops the box and fails the apply, saying why.
//! Refresh checks the record against the state and re-attests, requiring the same per-boot
//! key: a box that stopped, changed PCRs, or whose endpoint now leads to another agent shows in
//! `status` and is replaced.
//!
//! An `"eif"` image's box is a Nitro Enclave and presents an enclave document (PCR0, PCR1,
//! PCR2); a `"uki"` image's box boots the variant's disk (QEMU on the local backend, an EC2
//! instance with NitroTPM on aws) and presents a NitroTPM document (PCR4, PCR7, PCR12). Plan
//! refuses `expected_pcrs` naming the other kind's image PCRs, and a box the backend cannot
//! boot ([`safebox::cloud::Boxes::boots`]).
//!
//! A box of a governed image is governed by the image's policy (`enclave.deploy`).

use std::collections::BTreeMap;
use std::time::Duration;

use safebox::attest::document::DocumentKind;
use safebox::cloud::{new_record_id, BoxSpec, Placement, RecordKind, Tagged};
use safebox::govern::Action;
use safebox::image::spec::ImageFormat;

use crate::boxes::{attest, image_pcrs, kind_of, pcrs_map, pcrs_of, AttestationModel};
use crate::framework::diag::Diagnostics;
use crate::framework::model::{fully_known, StringList, StringMap, Tf};
use crate::framework::modifiers::{requires_replace, use_state_for_unknown};
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, Schema};
use crate::framework::timeouts::{limit, timeouts_block, within, CreateDeleteTimeouts};
use crate::framework::types::Type;
use crate::framework::validators::{http_url, int_between, not_blank, one_of, pcr_map};
use crate::framework::value::Value;
use crate::governance::{self, attributes_digest, Change, GovernanceModel, Governor, PolicySource};
use crate::images::{self, ImageFacts};
use crate::record;
use crate::resource::{Ctx, Resource};

/// `status` of a box whose latest document verified.
const ATTESTED: &str = "attested";
/// How long creating a box may take unless `timeouts.create` says otherwise.
const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long stopping a box may take unless `timeouts.delete` says otherwise.
const DEFAULT_DELETE_TIMEOUT: Duration = Duration::from_secs(600);

crate::model! {
    /// A `safebox_enclave`.
    pub struct EnclaveModel {
        /// The box's id.
        id: Tf<String>,
        /// The image it boots.
        image_id: Tf<String>,
        /// `prod` or `dev`.
        variant: Tf<String>,
        /// PCRs it must attest to.
        expected_pcrs: StringMap,
        /// vCPUs.
        cpu_count: Tf<i64>,
        /// Memory, MiB.
        memory_mib: Tf<i64>,
        /// aws: the instance type.
        instance_type: Tf<String>,
        /// aws: the subnet.
        subnet_id: Tf<String>,
        /// aws: security groups.
        security_group_ids: StringList,
        /// aws: the instance profile.
        iam_instance_profile: Tf<String>,
        /// aws: where its agent answers.
        attestation_endpoint: Tf<String>,
        /// The user's tags for the instance and its volumes.
        tags: StringMap,
        /// Where its agent answers.
        endpoint: Tf<String>,
        /// Where its sshd answers (the dev variant of a `"uki"` image).
        ssh_endpoint: Tf<String>,
        /// The backend's id for it.
        instance_id: Tf<String>,
        /// The verified document.
        attestation: Tf<AttestationModel>,
        /// `attested`, or why not any more.
        status: Tf<String>,
        /// Time limits.
        timeouts: Tf<CreateDeleteTimeouts>,
    }
    embed {
        /// Its governance.
        governance: GovernanceModel,
    }
}

impl EnclaveModel {
    /// The placement attributes that are set, by name.
    fn placement_set(&self) -> Vec<&'static str> {
        [
            ("instance_type", self.instance_type.is_null()),
            ("subnet_id", self.subnet_id.is_null()),
            ("security_group_ids", self.security_group_ids.is_null()),
            ("iam_instance_profile", self.iam_instance_profile.is_null()),
            ("attestation_endpoint", self.attestation_endpoint.is_null()),
        ]
        .into_iter()
        .filter_map(|(name, null)| (!null).then_some(name))
        .collect()
    }

    /// The cloud placement the box asks for.
    fn placement(&self) -> Placement {
        Placement {
            instance_type: self.instance_type.known().cloned(),
            subnet_id: self.subnet_id.known().cloned(),
            security_group_ids: self.security_group_ids.strings().unwrap_or_default(),
            iam_instance_profile: self.iam_instance_profile.known().cloned(),
            attestation_endpoint: self.attestation_endpoint.known().cloned(),
            tags: crate::tags::of(&self.tags),
        }
    }
}

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
        let replace = requires_replace;
        let mut attributes = vec![
            Attribute::computed("id", Type::String)
                .describe("The box's id in the backend; import by it.")
                .modify(use_state_for_unknown()),
            Attribute::required("image_id", Type::String)
                .describe("The `safebox_image` to boot.")
                .validate(not_blank())
                .modify(replace()),
            Attribute::with_default("variant", Type::String, Value::string("prod"))
                .describe("Which image to boot: `prod` (default) or `dev` (with SSH; never for real data).")
                .validate(one_of(&["prod", "dev"]))
                .modify(replace()),
            Attribute::optional_computed("expected_pcrs", Type::map(Type::String))
                .describe("PCR index to expected value (hex). Default: the image variant's measurements: PCR0, PCR1 and PCR2 of an `\"eif\"` image, NitroTPM PCR4, PCR7 and PCR12 of a `\"uki\"` image. The box's document must match these and the image's measurements; the other format's PCRs are refused.")
                .validate(pcr_map())
                .modify(use_state_for_unknown())
                .modify(replace()),
            Attribute::with_default("cpu_count", Type::Number, Value::int(2))
                .describe("vCPUs for the box, 1 to 128.")
                .validate(int_between(1, 128))
                .modify(replace()),
            Attribute::with_default("memory_mib", Type::Number, Value::int(1024))
                .describe("Memory for the box, MiB: 64 to 1048576 (a `\"uki\"` box on the local backend gets at least 256).")
                .validate(int_between(64, 1_048_576))
                .modify(replace()),
            Attribute::optional("instance_type", Type::String)
                .describe("aws backend: the EC2 instance type; one with NitroTPM. Default `m6i.large`.")
                .modify(replace()),
            crate::tags::attribute(),
            Attribute::optional("subnet_id", Type::String).describe("aws backend: the subnet.").modify(replace()),
            Attribute::optional("security_group_ids", Type::list(Type::String))
                .describe("aws backend: security groups.")
                .modify(replace()),
            Attribute::optional("iam_instance_profile", Type::String)
                .describe("aws backend: the instance profile.")
                .modify(replace()),
            Attribute::optional("attestation_endpoint", Type::String)
                .describe("aws backend: where the box's agent answers (`http://HOST:PORT`). Default `http://<private IP>:8443`.")
                .validate(http_url("http://10.0.1.5:8443"))
                .modify(replace()),
            Attribute::computed("endpoint", Type::String)
                .describe("Where the box's agent answers.")
                .modify(use_state_for_unknown()),
            Attribute::computed("ssh_endpoint", Type::String)
                .describe("Where the box's sshd answers, `HOST:PORT` (`ssh -p PORT root@HOST`): a box of the `dev` variant of a `\"uki\"` image with `dev_access` (on the local backend `127.0.0.1:PORT`, forwarded to the guest's port 22; on aws the instance's private IP and port 22). Null for every other box.")
                .modify(use_state_for_unknown()),
            Attribute::computed("instance_id", Type::String)
                .describe("The backend's id for the box.")
                .modify(use_state_for_unknown()),
            Attribute::computed("attestation", attestation_type())
                .describe("The verified document: `document_sha256`, `module_id`, `pcrs`, `public_key` (hex), `verified_at`, `simulated`.")
                .modify(use_state_for_unknown()),
            Attribute::computed("status", Type::String)
                .describe("`attested`, or why the latest re-attestation failed (which replaces the box).")
                .modify(replace()),
        ];
        attributes.extend(governance::attributes(PolicySource::Inherited));
        let block = Block::new(attributes)
            .with_blocks(vec![timeouts_block(
                &["create", "delete"],
                "How long starting and attesting the box may take (`create`, default 5m) and stopping it (`delete`, default 10m).",
            )])
            .describe("A box booted from an approved image, trusted only once its attestation document verifies.");
        Self {
            schema: Schema { version: 0, block },
        }
    }
}

/// The governed change of deploying the box planned in `value`: what runs (the image's digest
/// and the PCRs it must attest to) and with what resources.
fn deploy_change(value: &EnclaveModel, image: &ImageFacts) -> Option<Change> {
    if !fully_known(&value.expected_pcrs) {
        return None;
    }
    let mut expected = image.pcrs.clone();
    expected.extend(pcrs_of(&value.expected_pcrs));
    let expected: BTreeMap<String, String> = expected.into_iter().map(|(i, v)| (i.to_string(), v)).collect();
    Some(Change::create(
        Action::EnclaveDeploy,
        "safebox_enclave",
        attributes_digest(&serde_json::json!({
            "image_sha256": image.image_sha256,
            "variant": value.variant.as_deref(),
            "expected_pcrs": expected,
            "cpu_count": value.cpu_count.known(),
            "memory_mib": value.memory_mib.known(),
        })),
    ))
}

/// Checks configured `expected_pcrs` against the image; reports each contradiction at its key.
fn check_expected(configured: &BTreeMap<u32, String>, image: &ImageFacts, variant: &str, diags: &mut Diagnostics) {
    let kind = image.document_kind();
    let ours = kind.image_pcrs();
    for (index, value) in configured {
        if let Some(other) = DocumentKind::measuring(*index).filter(|other| *other != kind) {
            diags.error_at(
                AttributePath::attr_root("expected_pcrs").key(&index.to_string()),
                "Expected PCR of the other kind of box",
                format!(
                    "expected_pcrs[\"{index}\"]: PCR{index} measures the image in {}, but a box of this \"{}\" image presents {}, whose image PCRs are {}. Expect those instead (safebox_image.NAME.{variant}_measurements.pcr{}), or leave expected_pcrs out to expect the image's own.",
                    other.describe(),
                    image.format.as_str(),
                    kind.describe(),
                    ours.map(|i| format!("PCR{i}")).join(", "),
                    ours[0],
                ),
            );
            continue;
        }
        if let Some(measured) = image.pcrs.get(index).filter(|m| *m != value) {
            diags.error_at(
                AttributePath::attr_root("expected_pcrs").key(&index.to_string()),
                "Expected PCR differs from the image",
                format!("expected_pcrs[\"{index}\"] is {value}, but the {variant} image measures {measured}. A box of this image could never attest to that value: expect the image's value (safebox_image.NAME.{variant}_measurements.pcr{index}) or boot another image."),
            );
        }
    }
}

/// Reports at `image_id` that the backend cannot boot a box of `image`; whether it can.
fn check_boots(ctx: &Ctx, image: &ImageFacts, diags: &mut Diagnostics) -> bool {
    let cloud = &ctx.configured.cloud;
    if cloud.boots(image.format) {
        return true;
    }
    diags.error_at(
        AttributePath::attr_root("image_id"),
        format!("The {} backend cannot boot a box of an \"{}\" image", cloud.name(), image.format.as_str()),
        format!(
            "A box on the {} backend boots its image's disk, and an \"{}\" image has none that boots there (its AMI is a payload volume for a parent runtime that does not exist yet), so the box would never answer. Set format = \"{}\" (with a boot_stub block) on the safebox_image, or run this box on the local backend.",
            cloud.name(),
            image.format.as_str(),
            ImageFormat::Uki.as_str(),
        ),
    );
    false
}

/// Whether a box of `image` has an `ssh_endpoint`: a development box booted from a disk.
fn serves_ssh(image: &ImageFacts) -> bool {
    image.ssh && image.format == ImageFormat::Uki
}

/// How messages call a box and what it takes its policy from.
const NAMING: governance::Naming = ("box", "image's");

/// The policy governing a box of `image` (see [`governance::inherited_governor`]).
async fn governor_of(
    ctx: &Ctx,
    planned: &EnclaveModel,
    image: &ImageFacts,
    diags: &mut Diagnostics,
) -> Result<Option<Governor>, ()> {
    governance::inherited_governor(ctx, image.policy_id.as_deref(), &planned.governance, NAMING, diags).await
}

impl EnclaveResource {
    /// What an in-place update does to the box's governance: it follows its image's policy,
    /// and a box of an ungoverned image moving to another policy is governed by the one it
    /// leaves.
    async fn moved(
        &self,
        ctx: &Ctx,
        prior: &EnclaveModel,
        planned: &mut EnclaveModel,
        diags: &mut Diagnostics,
    ) -> Result<Option<(Change, Vec<Governor>)>, ()> {
        let (Some(image_id), Some(variant)) = (prior.image_id.as_deref(), prior.variant.as_deref()) else {
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
            (prior.id.as_deref().unwrap_or_default(), &prior.governance),
            &mut planned.governance,
            diags,
        )
        .await
    }
}

/// A known whole number that fits a `u32`.
fn known_u32(value: &Tf<i64>) -> Option<u32> {
    value.known().and_then(|n| u32::try_from(*n).ok())
}

#[async_trait::async_trait]
impl Resource for EnclaveResource {
    type Model = EnclaveModel;

    fn type_name(&self) -> &'static str {
        "safebox_enclave"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn plan(
        &self,
        ctx: &Ctx,
        prior: Option<&EnclaveModel>,
        planned: &mut EnclaveModel,
        diags: &mut Diagnostics,
    ) -> Vec<AttributePath> {
        if let Err(reason) = crate::config::attestation_trust_check(&ctx.configured) {
            diags.error("Attestation cannot be verified", format!("{reason}."));
            return Vec::new();
        }
        let cloud = &ctx.configured.cloud;
        if prior.is_none() && cloud.simulated().is_some() && ctx.configured.attestation.trust_root.is_none() {
            diags.warning(
                "Simulated attestation",
                format!("This box runs on the {} backend: its attestation document is signed by a software root generated on this machine (attestation.simulated = true). It shows the flow end to end but proves nothing about hardware; use the aws backend for real data.", cloud.name()),
            );
        }
        if !cloud.places_boxes() {
            for placement in planned.placement_set() {
                diags.warning(
                    format!("{placement} is ignored"),
                    format!("{placement} places a box in a cloud; the {} backend runs boxes on this machine and ignores it. Remove it.", cloud.name()),
                );
            }
        }
        planned.status = Tf::string(ATTESTED);
        if let Some(prior) = prior {
            governance::check_anchor(ctx, &prior.governance.change, diags).await;
            // Not a deployment: what was approved stands, unless the box moves to another
            // policy (or the image it runs did, which it follows).
            governance::keep(&prior.governance.change, &mut planned.governance.change);
            if let Ok(Some((change, governors))) = self.moved(ctx, prior, planned, diags).await {
                governance::plan(ctx, &mut planned.governance.change, &governors, change, diags).await;
            }
            return Vec::new();
        }
        if planned.variant.as_deref() == Some("dev") {
            diags.warning(
                "A development box",
                "variant = \"dev\" boots the development image, which has SSH: whoever holds an authorized key can read everything in the box. Never give it real data; deploy the prod variant for that.",
            );
        }
        // The image, when it already exists: its measurements are the default expected PCRs,
        // what a deployment approval names, and its policy governs the box.
        let known = (planned.image_id.known().cloned(), planned.variant.known().cloned());
        let mut quiet = Diagnostics::default();
        let image = match &known {
            (Some(image_id), Some(variant)) => images::facts(ctx, image_id, variant, "image_id", &mut quiet).await,
            _ => None,
        };
        let Some(image) = image else {
            // A production box never serves SSH, whatever its image turns out to be.
            if known.1.as_deref() == Some("prod") {
                planned.ssh_endpoint = Tf::Null;
            }
            // Created in this run: checked and governed at apply, but a policy without a rule
            // for deployments fails now.
            governance::require_rule(ctx, &planned.governance.policy_id, Action::EnclaveDeploy, diags).await;
            if planned.governance.policy_id.is_null() && known.0.is_some() {
                planned.governance.policy_id = Tf::Unknown;
            }
            governance::unknown(&mut planned.governance.change);
            return Vec::new();
        };
        // The image was found, so both were known.
        let variant = known.1.unwrap_or_default();
        if !check_boots(ctx, &image, diags) {
            return Vec::new();
        }
        if !serves_ssh(&image) {
            planned.ssh_endpoint = Tf::Null;
        }
        if planned.expected_pcrs.is_unknown() {
            planned.expected_pcrs = pcrs_map(&image.pcrs);
        } else {
            check_expected(&pcrs_of(&planned.expected_pcrs), &image, &variant, diags);
        }
        let Ok(governor) = governor_of(ctx, planned, &image, diags).await else {
            return Vec::new();
        };
        match governor {
            Some(governor) => {
                planned.governance.policy_id = Tf::string(&governor.policy_id);
                match deploy_change(planned, &image) {
                    Some(change) => {
                        governance::plan(ctx, &mut planned.governance.change, &[governor], change, diags).await;
                    }
                    None => {
                        governance::pending(&mut planned.governance.change, &governor, Action::EnclaveDeploy, diags)
                    }
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
        planned: &EnclaveModel,
        config: &EnclaveModel,
        diags: &mut Diagnostics,
    ) -> Option<EnclaveModel> {
        let image_id = planned.image_id.as_deref().unwrap_or_default().to_owned();
        let variant = planned.variant.as_deref().unwrap_or("prod").to_owned();
        let image = images::facts(ctx, &image_id, &variant, "image_id", diags).await?;
        if !check_boots(ctx, &image, diags) {
            return None;
        }
        let (Some(cpu_count), Some(memory_mib)) = (known_u32(&planned.cpu_count), known_u32(&planned.memory_mib))
        else {
            diags.error(
                "Box size unknown at apply",
                "cpu_count and memory_mib must be known when the box is created.",
            );
            return None;
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
                return None;
            }
            Err(e) => {
                diags.error_at(
                    AttributePath::attr_root("image_id"),
                    "Image artifact unreadable",
                    format!("{e}. No box was started."),
                );
                return None;
            }
        }
        let configured = pcrs_of(&config.expected_pcrs);
        check_expected(&configured, &image, &variant, diags);
        if diags.has_errors() {
            return None;
        }
        let mut expected = image.pcrs.clone();
        expected.extend(configured.clone());
        // The deployment as it will run: configured PCRs, or the image's.
        let mut state = planned.clone();
        if configured.is_empty() {
            state.expected_pcrs = pcrs_map(&image.pcrs);
        }
        let governor = governor_of(ctx, &state, &image, diags).await.ok()?;
        let change = deploy_change(&state, &image).map(Some).ok_or((
            "Deployment unknown at apply",
            "expected_pcrs must be known when the box is created.",
        ));
        let authorization = governance::authorize_create(ctx, governor.as_ref(), change, &mut state.governance, diags)
            .await
            .ok()?;
        let id = new_record_id("box");
        let key = match ctx.configured.box_keys.create(&id) {
            Ok(key) => key,
            Err(e) => {
                diags.error("Cannot keep the box's key", format!("{e}. No box was started."));
                return None;
            }
        };
        let spec = BoxSpec {
            artifact: image.artifact.clone(),
            format: image.format,
            ssh: serves_ssh(&image),
            cpu_count,
            memory_mib,
            placement: planned.placement(),
            // The backend stops waiting for the box after timeouts.create.
            start_timeout: limit(&planned.timeouts, |t| &t.create, DEFAULT_CREATE_TIMEOUT),
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
                return None;
            }
        };
        let attestation = match tokio::task::block_in_place(|| {
            attest(ctx, &instance.endpoint, &expected, image.document_kind())
        }) {
            Ok(attestation) => attestation,
            Err(reason) => {
                stop(ctx, &id);
                diags.error("Attestation failed: the box was stopped", format!("The box's attestation document did not verify: {reason}. Nothing trusts this box; it was stopped."));
                return None;
            }
        };
        state.id = Tf::string(&id);
        state.endpoint = Tf::string(&instance.endpoint);
        state.ssh_endpoint = instance.ssh_endpoint.into();
        state.instance_id = Tf::string(&instance.instance_id);
        state.attestation = Tf::Known(attestation);
        state.status = Tf::string(ATTESTED);
        if let Some(authorization) = authorization {
            governance::record(ctx, authorization, &id, &mut state.governance.change, diags).await;
        }
        if !diags.has_errors() {
            record::create(ctx, RecordKind::Enclave, &id, &state, diags).await;
        }
        if diags.has_errors() {
            stop(ctx, &id);
            return None;
        }
        Some(state)
    }

    async fn read(&self, ctx: &Ctx, state: &EnclaveModel, diags: &mut Diagnostics) -> Option<EnclaveModel> {
        let id = state.id.as_deref()?;
        governance::check_anchor(ctx, &state.governance.change, diags).await;
        let mut stored = record::load_checked(ctx, self.records(), id, state, diags).await?;
        let status = match ctx.configured.cloud.find_box(id).await {
            Ok(None) => "stopped: the box is not running".to_owned(),
            Ok(Some(_)) => {
                // The endpoint the record names, which links and every later call use: the
                // agent answering there must be this box's.
                let endpoint = stored.endpoint.as_deref().unwrap_or_default().to_owned();
                let attested = stored.attestation.known();
                let configured = pcrs_of(&stored.expected_pcrs);
                let kind = kind_of(ctx, stored.image_id.as_deref(), stored.variant.as_deref(), &configured).await;
                // What the box proved at apply (its image's PCRs), and what the configuration
                // expects on top.
                let mut expected = image_pcrs(&attested.map(|a| pcrs_of(&a.pcrs)).unwrap_or_default(), kind);
                expected.extend(configured);
                let recorded_key = attested.and_then(|a| a.public_key.known()).cloned().unwrap_or_default();
                match tokio::task::block_in_place(|| attest(ctx, &endpoint, &expected, kind)) {
                    // The same PCRs are not enough: another box of the same image has them too.
                    // Only this box's agent holds the per-boot key it attested with.
                    Ok(fresh) if fresh.public_key.as_deref() == Some(recorded_key.as_str()) => ATTESTED.to_owned(),
                    Ok(_) => format!("re-attestation failed: the agent at {endpoint} is not this box's agent (it attests with another per-boot key)"),
                    Err(reason) => format!("re-attestation failed: {reason}"),
                }
            }
            Err(e) => {
                diags.error("Cannot find the box", format!("{e}."));
                return Some(stored);
            }
        };
        stored.status = Tf::string(status);
        Some(stored)
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &EnclaveModel,
        planned: &EnclaveModel,
        _config: &EnclaveModel,
        diags: &mut Diagnostics,
    ) -> EnclaveModel {
        // Every argument replaces the box; only the tags, the timeouts and the policy change in
        // place (a move is governed by the policy the box leaves).
        let Some(id) = prior.id.as_deref() else {
            return prior.clone();
        };
        let home = [ctx.configured.cloud.as_ref()];
        if !crate::tags::retag(&home, Tagged::Box(id), (&prior.tags, &planned.tags), diags).await {
            return prior.clone();
        }
        let mut planned = planned.clone();
        let authorization = match self.moved(ctx, prior, &mut planned, diags).await {
            Err(()) => return prior.clone(),
            Ok(Some((change, governors))) => {
                match governance::authorize(ctx, &planned.governance.change, &governors, &change, diags).await {
                    Some(authorization) => Some(authorization),
                    None => return prior.clone(),
                }
            }
            Ok(None) => None,
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

    async fn delete(&self, ctx: &Ctx, prior: &EnclaveModel, diags: &mut Diagnostics) {
        let Some(id) = prior.id.as_deref() else { return };
        let allowed = limit(&prior.timeouts, |t| &t.delete, DEFAULT_DELETE_TIMEOUT);
        let late = format!("Stopping box {id} took longer than timeouts.delete ({} s); it is still in state. Destroy again, or raise timeouts.delete.", allowed.as_secs());
        let stopping = ctx.configured.cloud.terminate_box(id);
        if within(
            allowed,
            stopping,
            "Cannot stop the box",
            ("The box did not stop in time", late),
            diags,
        )
        .await
        .is_none()
        {
            return;
        }
        if let Err(e) = ctx.configured.box_keys.remove(id) {
            diags.warning(
                "Box key left behind",
                format!("The box was stopped, but its key could not be removed: {e}."),
            );
        }
        record::remove(ctx, RecordKind::Enclave, id, diags).await;
        governance::record_destroy(ctx, ("safebox_enclave", id), &prior.governance, diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Option<EnclaveModel> {
        record::import(ctx, RecordKind::Enclave, id, &self.schema, diags).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(format: ImageFormat) -> ImageFacts {
        ImageFacts::example(format)
    }

    fn errors(configured: &[(u32, String)], image: &ImageFacts) -> Vec<(String, String)> {
        let mut diags = Diagnostics::default();
        check_expected(&configured.iter().cloned().collect(), image, "prod", &mut diags);
        diags
            .as_slice()
            .iter()
            .map(|d| {
                (
                    d.path.as_ref().map(ToString::to_string).unwrap_or_default(),
                    d.detail.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn expected_pcrs_of_the_other_kind_of_box_are_refused_naming_the_fix() {
        let uki = image(ImageFormat::Uki);
        let found = errors(&[(0, "ab".repeat(48)), (9, "cd".repeat(48))], &uki);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "expected_pcrs[\"0\"]");
        assert!(found[0].1.contains("Nitro Enclave document"), "{}", found[0].1);
        assert!(found[0].1.contains("PCR4, PCR7, PCR12"), "{}", found[0].1);
        assert!(found[0].1.contains("prod_measurements.pcr4"), "{}", found[0].1);
        // Its own PCRs are checked against the image as before.
        let found = errors(&[(4, "ab".repeat(48))], &uki);
        assert!(found[0].1.contains("the prod image measures"), "{found:?}");
        assert!(errors(&[(12, "0c".repeat(48))], &uki).is_empty());

        let eif = image(ImageFormat::Eif);
        let found = errors(&[(12, "ab".repeat(48)), (3, "ab".repeat(48))], &eif);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "expected_pcrs[\"12\"]");
        assert!(found[0].1.contains("PCR0, PCR1, PCR2"), "{}", found[0].1);
    }

    #[test]
    fn only_dev_boxes_of_disks_serve_ssh() {
        let mut uki = image(ImageFormat::Uki);
        assert!(!serves_ssh(&uki));
        uki.ssh = true;
        assert!(serves_ssh(&uki));
        let mut eif = image(ImageFormat::Eif);
        eif.ssh = true;
        assert!(!serves_ssh(&eif), "an enclave's SSH is not forwarded anywhere");
    }
}
