//! `safebox_image`: the reproducible two-image pipeline.
//!
//! Planning builds both images (or finds the build cached by its inputs' digest), so the
//! manifest digest, both images' measurements and the seal proof digest are in the plan before
//! anything is published. Apply publishes the cached build through the backend, only if what
//! it would publish is what the plan measured; refresh checks the record against the state
//! and re-hashes what was published, and a changed or missing artifact plans a replacement
//! whose `artifact_status` says which file changed.
//!
//! Governed by `policy_id`: publishing (with its launch permissions and copies) is
//! `image.publish`; changing who may launch it or where it is copied is `image.share`; moving
//! it to another policy, or out of governance, is `image.publish` under the current policy
//! (and the new policy's rule, when it has one).

use std::path::Path;

use safebox::cloud::{new_record_id, ArtifactKind, RecordKind};
use safebox::image::build::{BuildError, BuildOptions, ImageBuild};
use safebox::image::manifest::Measurements;
use safebox::image::spec::{is_sha256_hex, DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
use safebox::image::Variant;

use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, NestedBlock, PlanModifier, Schema, Validator};
use crate::framework::types::Type;
use crate::framework::validators::{not_blank, one_of};
use crate::framework::value::Value;
use crate::governance::{self, attributes_digest, Change, PolicySource};
use crate::images::expected_artifacts;
use crate::record;
use crate::resource::{Ctx, Resource};
use safebox::govern::Action;

mod copies;

/// `artifact_status` when every published file still has its digest.
const INTACT: &str = "intact";
/// The attributes that are inputs of the build.
const INPUTS: &[&str] = &[
    "name",
    "format",
    "source_date_epoch",
    "kernel",
    "boot_stub",
    "cmdline",
    "layer",
    "dev_access",
];
/// Computed attributes that only backends publishing machine images set.
const AMI_ONLY: &[&str] = &[
    "dev_ami_id",
    "prod_ami_id",
    "snapshot_linear_sha256",
    "dev_snapshot_linear_sha256",
];
/// Computed attributes that only backends publishing files set.
const FILE_ONLY: &[&str] = &["dev_artifact", "prod_artifact"];

/// The `safebox_image` resource.
pub struct ImageResource {
    schema: Schema,
}

impl Default for ImageResource {
    fn default() -> Self {
        Self::new()
    }
}

fn sha256_hex() -> Validator {
    std::sync::Arc::new(|value: &Value| match value.as_str() {
        Some(s) if is_sha256_hex(s) => Ok(()),
        _ => Err("must be a SHA-256 digest: 64 hex digits, e.g. the output of `sha256sum FILE`".into()),
    })
}

/// The strings of the list or set attribute `name` of `value`.
fn strings(value: &Value, name: &str) -> Vec<String> {
    value
        .get(name)
        .as_list()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The accounts `value` shares the image with.
fn shared_with(value: &Value) -> Vec<String> {
    strings(value, copies::SHARED_WITH)
}

/// The regions `value` copies the image to.
fn copied_to(value: &Value) -> Vec<String> {
    strings(value, copies::COPIED_TO)
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

fn input_block() -> Block {
    Block::new(vec![
        Attribute::required("source", Type::String)
            .describe("Path of the input file, relative to Terraform's working directory.")
            .validate(not_blank()),
        Attribute::required("sha256", Type::String)
            .describe("The input's SHA-256 (hex). The build fails, naming both digests, if the file differs.")
            .validate(sha256_hex()),
    ])
}

fn measurements_type() -> Type {
    Type::object([
        ("image_sha256", Type::String),
        ("pcr0", Type::String),
        ("pcr1", Type::String),
        ("pcr2", Type::String),
        ("pcr4", Type::String),
        ("pcr7", Type::String),
        ("pcr12", Type::String),
        ("disk_sha256", Type::String),
    ])
}

fn measurements_value(m: &Measurements) -> Value {
    let optional = |v: &Option<String>| v.as_ref().map_or(Value::Null, Value::string);
    Value::object([
        ("image_sha256", Value::string(&m.image_sha256)),
        ("pcr0", optional(&m.pcr0)),
        ("pcr1", optional(&m.pcr1)),
        ("pcr2", optional(&m.pcr2)),
        ("pcr4", optional(&m.pcr4)),
        ("pcr7", optional(&m.pcr7)),
        ("pcr12", optional(&m.pcr12)),
        ("disk_sha256", optional(&m.disk_sha256)),
    ])
}

impl ImageResource {
    /// Its records, and the attributes refresh recomputes (which a record may hold older).
    fn records(&self) -> record::Records<'_> {
        record::Records {
            kind: RecordKind::Image,
            schema: &self.schema,
            live: &["artifact_status"],
        }
    }

    /// The resource with its schema.
    #[must_use]
    pub fn new() -> Self {
        let layer = Block::new(vec![
            Attribute::required("name", Type::String)
                .describe("Unique layer name.")
                .validate(not_blank()),
            Attribute::required("source", Type::String)
                .describe("A tar archive to unpack into the layer, or a single file to place at `destination`.")
                .validate(not_blank()),
            Attribute::required("sha256", Type::String)
                .describe("The input's SHA-256 (hex).")
                .validate(sha256_hex()),
            Attribute::optional("destination", Type::String).describe(
                "For a single file: its absolute path in the image (mode 0755). Leave unset for a tar archive.",
            ),
        ]);
        let dev_access = Block::new(vec![Attribute::required(
            "ssh_authorized_keys",
            Type::list(Type::String),
        )
        .describe("OpenSSH public keys that may log in to the development image.")])
        .with_blocks(vec![NestedBlock::single(
            "sshd",
            input_block().describe("The sshd binary, hash-pinned."),
        )
        .required()]);
        let mut attributes = vec![
            Attribute::computed("id", Type::String)
                .describe("The image's id in the backend; import by it.")
                .modify(PlanModifier::UseStateForUnknown),
            Attribute::required("name", Type::String)
                .describe("The image's name.")
                .validate(not_blank())
                .modify(PlanModifier::RequiresReplace),
            Attribute::with_default("format", Type::String, Value::string("eif"))
                .describe("`eif` (default): a Nitro Enclave Image File, measured by PCR0, PCR1 and PCR2. `uki`: an attestable disk image (a Unified Kernel Image on a GPT disk whose EFI System Partition boots it), measured by NitroTPM PCR4, PCR7 and PCR12; needs `boot_stub`.")
                .validate(one_of(&["eif", "uki"]))
                .modify(PlanModifier::RequiresReplace),
            Attribute::with_default("source_date_epoch", Type::Number, Value::int(0))
                .describe("Every timestamp in the image is clamped to this time (seconds since 1970). Default 0.")
                .modify(PlanModifier::RequiresReplace),
            Attribute::with_default("cmdline", Type::String, Value::string(""))
                .describe("The kernel command line.")
                .modify(PlanModifier::RequiresReplace),
            Attribute::computed("manifest_sha256", Type::String)
                .describe("SHA-256 of the build manifest (inputs and the digests they produce)."),
            Attribute::computed("dev_measurements", measurements_type())
                .describe("The development image: `image_sha256` (the EIF's, or the UKI's), and for `eif` PCRs `pcr0`, `pcr1`, `pcr2`, for `uki` NitroTPM `pcr4`, `pcr7`, `pcr12` (SHA-384, standard boot) and `disk_sha256` (the raw disk); what a format does not have is null."),
            Attribute::computed("prod_measurements", measurements_type())
                .describe("The production image, as `dev_measurements`."),
            Attribute::computed("seal_proof_sha256", Type::String).describe(
                "SHA-256 of the seal proof showing the production image is the development image minus its SSH layer.",
            ),
            Attribute::computed("dev_artifact", Type::String)
                .describe("local backend: path of the development EIF, or of its bootable disk for `uki`."),
            Attribute::computed("prod_artifact", Type::String)
                .describe("local backend: path of the production EIF, or of its bootable disk for `uki`."),
            Attribute::optional("launch_permission_account_ids", Type::list(Type::String))
                .describe("aws backend: AWS accounts (auditors, say) that may launch both AMIs. Changes in place.")
                .validate(copies::account_ids()),
            Attribute::optional("copy_to_regions", Type::set(Type::String))
                .describe("aws backend: other regions both AMIs are copied to (`CopyImage`), tagged and shared like the originals. Changes in place.")
                .validate(copies::region_names()),
            Attribute::computed(
                "regional_amis",
                Type::map(Type::object([("dev_ami_id", Type::String), ("prod_ami_id", Type::String)])),
            )
            .describe("aws backend: the copies, by region: `dev_ami_id` and `prod_ami_id`."),
            Attribute::computed("dev_ami_id", Type::String).describe("aws backend: the development image's AMI."),
            Attribute::computed("prod_ami_id", Type::String).describe("aws backend: the production image's AMI."),
            Attribute::computed("snapshot_linear_sha256", Type::String).describe(
                "aws backend: the LINEAR aggregate SHA-256 (hex) of the production AMI's snapshot, as sent to EBS with CompleteSnapshot: SHA-256 over the SHA-256 of every non-zero 512 KiB block in block order.",
            ),
            Attribute::computed("dev_snapshot_linear_sha256", Type::String)
                .describe("aws backend: the same for the development AMI's snapshot."),
            Attribute::computed("artifact_status", Type::String)
                .describe("`intact`, or which published file changed or went missing (which replaces the image).")
                .modify(PlanModifier::RequiresReplace),
        ];
        attributes.extend(governance::attributes(PolicySource::Own));
        let block = Block::new(attributes)
        .with_blocks(vec![
            NestedBlock::single("kernel", input_block().describe("The kernel image, hash-pinned."))
                .required()
                .modify(PlanModifier::RequiresReplace),
            NestedBlock::single(
                "boot_stub",
                input_block().describe("`uki` only: the EFI stub the Unified Kernel Image is built on (systemd's `linuxx64.efi.stub`), hash-pinned."),
            )
            .modify(PlanModifier::RequiresReplace),
            NestedBlock::list("layer", layer, 1).modify(PlanModifier::RequiresReplace),
            NestedBlock::single("dev_access", dev_access.describe("SSH access, in the development image only."))
                .modify(PlanModifier::RequiresReplace),
        ])
        .describe("A reproducible development image and the production image sealed from it, with their measurements known at plan time.");
        Self {
            schema: Schema { version: 0, block },
        }
    }

    fn build(&self, ctx: &Ctx, spec: &ImageSpec, diags: &mut Diagnostics) -> Option<ImageBuild> {
        let cache_dir = safebox::image::build::cache_dir(&ctx.configured.state_dir);
        let built = tokio::task::block_in_place(|| {
            ImageBuild::load_or_build(
                spec,
                &BuildOptions {
                    base_dir: Path::new("."),
                    cache_dir: &cache_dir,
                    progress: None,
                },
            )
        });
        match built {
            Ok(build) => Some(build),
            Err(e) => {
                report(&e, diags);
                None
            }
        }
    }
}

fn report(error: &BuildError, diags: &mut Diagnostics) {
    match error {
        BuildError::Spec(errors) => {
            for e in errors {
                diags.error_at(AttributePath::from(&e.field), "Invalid image", format!("{e}."));
            }
        }
        other => match other.fields().first() {
            Some(field) => diags.error_at(AttributePath::from(field), "Image build failed", format!("{other}.")),
            None => diags.error("Image build failed", format!("{other}.")),
        },
    }
}

fn input_of(value: &Value) -> InputRef {
    InputRef {
        source: value.get("source").as_str().unwrap_or_default().to_owned(),
        sha256: value.get("sha256").as_str().unwrap_or_default().to_owned(),
    }
}

/// The specification in `value`, if every input attribute is known.
fn spec_of(value: &Value) -> Option<ImageSpec> {
    if !INPUTS.iter().all(|a| value.get(a).is_fully_known()) {
        return None;
    }
    let dev = value.get("dev_access");
    let stub = value.get("boot_stub");
    Some(ImageSpec {
        name: value.get("name").as_str().unwrap_or_default().to_owned(),
        format: value
            .get("format")
            .as_str()
            .and_then(ImageFormat::parse)
            .unwrap_or_default(),
        boot_stub: (!stub.is_null()).then(|| input_of(stub)),
        source_date_epoch: value.get("source_date_epoch").as_i64().unwrap_or(0),
        kernel: input_of(value.get("kernel")),
        cmdline: value.get("cmdline").as_str().unwrap_or_default().to_owned(),
        layers: value
            .get("layer")
            .as_list()
            .iter()
            .map(|l| LayerSpec {
                name: l.get("name").as_str().unwrap_or_default().to_owned(),
                input: input_of(l),
                destination: l.get("destination").as_str().map(str::to_owned),
            })
            .collect(),
        dev_access: (!dev.is_null()).then(|| DevAccessSpec {
            ssh_authorized_keys: dev
                .get("ssh_authorized_keys")
                .as_list()
                .iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            sshd: input_of(dev.get("sshd")),
        }),
    })
}

/// What publishing the image planned in `value` makes available: its manifest names every
/// byte of both images; with it, who may launch them and where they are copied.
fn distribution(value: &Value) -> serde_json::Value {
    serde_json::json!({
        "launch_permission_account_ids": shared_with(value),
        "copy_to_regions": sorted(copied_to(value)),
    })
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

/// The governed change of publishing the image planned in `value`.
fn publish_change(value: &Value) -> Option<Change> {
    let manifest = value.get("manifest_sha256").as_str()?;
    if !value.get("launch_permission_account_ids").is_fully_known() || !value.get("copy_to_regions").is_fully_known() {
        return None;
    }
    Some(Change::create(
        Action::ImagePublish,
        "safebox_image",
        attributes_digest(&serde_json::json!({ "manifest_sha256": manifest, "distribution": distribution(value) })),
    ))
}

/// The governed change of an in-place update from `prior` to `planned`, under the policy that
/// governs it (the prior one), if the update is governed: sharing or copying it otherwise
/// (`image.share`), or moving it to another policy (`image.publish`). Both at once is refused.
fn update_change(prior: &Value, planned: &Value, diags: &mut Diagnostics) -> Option<Change> {
    let id = prior.get("id").as_str()?;
    let moved = prior.get("policy_id") != planned.get("policy_id");
    let reshared = distribution(prior) != distribution(planned);
    if moved && reshared {
        diags.error_at(
            AttributePath::attr_root("policy_id"),
            "Two governed changes at once",
            "This update moves the image to another policy and changes who may launch it or where it is copied. Each is approved on its own: apply one, then the other.",
        );
        return None;
    }
    if moved {
        return governance::move_change(Action::ImagePublish, "safebox_image", prior, planned);
    }
    reshared.then(|| {
        Change::update(
            Action::ImageShare,
            "safebox_image",
            id,
            attributes_digest(&distribution(prior)),
            attributes_digest(&distribution(planned)),
        )
    })
}

/// `planned` with the build's digests filled in.
fn with_build(planned: &Value, build: &ImageBuild) -> Value {
    let mut state = planned.clone();
    state.set("manifest_sha256", Value::string(build.manifest_sha256()));
    state.set("seal_proof_sha256", Value::string(build.seal_proof_sha256()));
    state.set("dev_measurements", measurements_value(build.measurements(Variant::Dev)));
    state.set(
        "prod_measurements",
        measurements_value(build.measurements(Variant::Prod)),
    );
    state.set("artifact_status", Value::string(INTACT));
    state
}

/// Refuses a build whose digests are not the ones the plan showed: what apply publishes is
/// byte for byte what plan measured.
fn check_planned(planned: &Value, build: &ImageBuild, diags: &mut Diagnostics) {
    let built = with_build(planned, build);
    for name in [
        "manifest_sha256",
        "seal_proof_sha256",
        "dev_measurements",
        "prod_measurements",
    ] {
        let shown = planned.get(name);
        if shown.is_fully_known() && !shown.is_null() && shown != built.get(name) {
            diags.error_at(
                AttributePath::attr_root(name),
                "The image differs from the plan",
                format!(
                    "The plan showed {name} = {}, but the build now gives {}: an input or the build cache changed since the plan. Nothing was published; run terraform plan again and review the new measurements.",
                    shown.to_json(),
                    built.get(name).to_json()
                ),
            );
            return;
        }
    }
}

/// Warns about pinned inputs that no longer match their files: the published image is
/// unaffected, but a rebuild (or an auditor's `safebox image rebuild`) would fail.
fn warn_changed_inputs(spec: &ImageSpec, diags: &mut Diagnostics) {
    for (field, input) in spec.inputs() {
        let path = Path::new(&input.source);
        let actual = std::fs::File::open(path).and_then(|mut file| {
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            std::io::copy(&mut file, &mut hasher)?;
            Ok(hex::encode(sha2::Digest::finalize(hasher)))
        });
        let problem = match actual {
            Ok(actual) if actual.eq_ignore_ascii_case(&input.sha256) => continue,
            Ok(actual) => format!(
                "{} now has SHA-256 {actual}, not the pinned {}",
                input.source, input.sha256
            ),
            Err(e) => format!("{} cannot be read ({e})", input.source),
        };
        diags.warning(
            format!("Input changed: {field}"),
            format!("{problem}. The published image is unchanged, but it can no longer be rebuilt from these inputs (nor by auditors). Restore the file, or pin the new digest to publish a new image."),
        );
    }
}

#[async_trait::async_trait]
impl Resource for ImageResource {
    fn type_name(&self) -> &'static str {
        "safebox_image"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        let mut config = config.clone();
        // Defaults are not applied to configuration; check with them.
        for (name, default) in [
            ("source_date_epoch", Value::int(0)),
            ("cmdline", Value::string("")),
            ("format", Value::string("eif")),
        ] {
            if config.get(name).is_null() {
                config.set(name, default);
            }
        }
        if let Some(Err(errors)) = spec_of(&config).map(|spec| spec.check()) {
            report(&BuildError::Spec(errors), diags);
        }
    }

    async fn plan(&self, ctx: &Ctx, prior: &Value, planned: &mut Value, diags: &mut Diagnostics) {
        let cloud = &ctx.configured.cloud;
        if !copies::plan(ctx, &shared_with(planned), &copied_to(planned), diags) {
            return;
        }
        // What this backend never sets is null, not "known after apply".
        let never = match cloud.artifact_kind() {
            ArtifactKind::File => AMI_ONLY,
            ArtifactKind::MachineImage => FILE_ONLY,
        };
        for name in never {
            planned.set(name, Value::Null);
        }
        if cloud.regions().is_none() {
            planned.set("regional_amis", Value::Null);
        }
        let unchanged = !prior.is_null() && INPUTS.iter().all(|a| prior.get(a) == planned.get(a));
        if unchanged {
            governance::check_anchor(ctx, prior, diags).await;
            if let Some(spec) = spec_of(planned) {
                warn_changed_inputs(&spec, diags);
            }
            // Same inputs, same images: what was measured and approved stands; only the
            // published files' state can differ, and a damaged file replaces the image.
            planned.set("artifact_status", Value::string(INTACT));
            // Nothing is rebuilt or republished: every computed value stands, but the
            // copies when the regions change.
            let recopied = copied_to(prior) != copied_to(planned);
            if let (Some(before), Value::Map(after)) = (prior.as_map(), &mut *planned) {
                for (name, value) in before {
                    if name == "regional_amis" && recopied {
                        continue;
                    }
                    if after.get(name).is_some_and(Value::is_unknown) {
                        after.insert(name.clone(), value.clone());
                    }
                }
            }
            governance::keep(prior, planned);
            let Some(governors) = governance::update_governors(ctx, prior, planned, diags).await else {
                return;
            };
            if let (Some(change), false) = (update_change(prior, planned, diags), governors.is_empty()) {
                governance::plan(ctx, planned, &governors, Some(change), diags).await;
            }
            return;
        }
        // A destroy run plans would-be creates too, and creates nothing: it builds nothing.
        if let Some(spec) = spec_of(planned).filter(|_| !(prior.is_null() && crate::run::is_destroy())) {
            if let Some(build) = self.build(ctx, &spec, diags) {
                *planned = with_build(planned, &build);
            }
        }
        match planned.get("policy_id").clone() {
            Value::Null => governance::ungoverned(planned),
            Value::String(policy_id) => {
                if let Some(governor) = governance::governor(ctx, &policy_id, "policy_id", diags).await {
                    let change = publish_change(planned);
                    governance::plan(ctx, planned, &[governor], change, diags).await;
                }
            }
            _ => governance::unknown(planned),
        }
    }

    async fn create(&self, ctx: &Ctx, planned: &Value, _config: &Value, diags: &mut Diagnostics) -> Value {
        let Some(spec) = spec_of(planned) else {
            diags.error(
                "Image inputs unknown at apply",
                "Every input of safebox_image must be known when it is applied.",
            );
            return Value::Null;
        };
        let Some(build) = self.build(ctx, &spec, diags) else {
            return Value::Null;
        };
        check_planned(planned, &build, diags);
        if diags.has_errors() {
            return Value::Null;
        }
        let mut state = with_build(planned, &build);
        let authorization = match planned.get("policy_id").as_str() {
            Some(policy_id) => {
                let Some(governor) = governance::governor(ctx, policy_id, "policy_id", diags).await else {
                    return Value::Null;
                };
                let Some(change) = publish_change(&state) else {
                    diags.error(
                        "Image unknown at apply",
                        "Every argument of a governed safebox_image must be known when it is applied.",
                    );
                    return Value::Null;
                };
                let Some(authorization) = governance::authorize(ctx, planned, &[governor], &change, diags).await else {
                    return Value::Null;
                };
                Some(authorization)
            }
            None => {
                governance::ungoverned(&mut state);
                None
            }
        };
        let id = new_record_id("img");
        let cloud = &ctx.configured.cloud;
        let published = block_on(cloud.publish_image(&id, &build));
        let published = match published {
            Ok(published) => published,
            Err(e) => {
                diags.error("Cannot publish the image", format!("{e}."));
                return Value::Null;
            }
        };
        state.set("id", Value::string(&id));
        let (artifacts, other) = match cloud.artifact_kind() {
            ArtifactKind::MachineImage => (["dev_ami_id", "prod_ami_id"], FILE_ONLY),
            ArtifactKind::File => (["dev_artifact", "prod_artifact"], AMI_ONLY),
        };
        for name in other {
            state.set(name, Value::Null);
        }
        state.set(artifacts[0], Value::string(published.dev_artifact));
        state.set(artifacts[1], Value::string(published.prod_artifact));
        if let Some((dev_linear, prod_linear)) = published.snapshot_linear_sha256 {
            state.set("dev_snapshot_linear_sha256", Value::string(dev_linear));
            state.set("snapshot_linear_sha256", Value::string(prod_linear));
        }
        let accounts = shared_with(&state);
        if !accounts.is_empty() {
            copies::share(ctx, &id, None, &accounts, diags).await;
        }
        let regions = copied_to(&state);
        if !diags.has_errors() && cloud.regions().is_some() {
            let copies = copies::copy_to(ctx, &id, &regions, &accounts, diags).await;
            state.set("regional_amis", Value::Map(copies.into_iter().collect()));
        } else {
            state.set("regional_amis", Value::Null);
        }
        if !diags.has_errors() {
            if let Some(authorization) = authorization {
                governance::record(ctx, authorization, &id, &mut state, diags).await;
            }
        }
        if !diags.has_errors() {
            record::create(ctx, RecordKind::Image, &id, &state, diags).await;
        }
        if diags.has_errors() {
            // Best effort: the error that got here is the one to report.
            copies::delete_copies(ctx, &id, &regions, &mut Diagnostics::default()).await;
            let _ = cloud.delete_image(&id).await;
            return Value::Null;
        }
        build.discard();
        state
    }

    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value {
        let Some(id) = state.get("id").as_str() else {
            return Value::Null;
        };
        governance::check_anchor(ctx, state, diags).await;
        let Some(mut stored) = record::load_checked(ctx, self.records(), id, state, diags).await else {
            return Value::Null;
        };
        let cloud = &ctx.configured.cloud;
        let expected = expected_artifacts(&stored.to_json());
        let checked = match block_on(cloud.check_image(id, &expected)) {
            Ok(mut problems) => {
                let regions = copied_to(&stored);
                let elsewhere = block_on(copies::check_copies(ctx, id, &regions, &expected, diags));
                elsewhere.map(|found| {
                    problems.extend(found);
                    problems
                })
            }
            Err(e) => {
                diags.error("Cannot check the image's artifacts", format!("{e}."));
                None
            }
        };
        match checked {
            Some(problems) if problems.is_empty() => stored.set("artifact_status", Value::string(INTACT)),
            Some(problems) => stored.set("artifact_status", Value::string(problems.join("; "))),
            None => {}
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
        // Every input replaces the image; who may launch it, where it is copied and which
        // policy governs it change in place.
        let Some(id) = prior.get("id").as_str() else {
            return prior.clone();
        };
        let Some(governors) = governance::update_governors(ctx, prior, planned, diags).await else {
            return prior.clone();
        };
        let change = update_change(prior, planned, diags);
        if diags.has_errors() {
            return prior.clone();
        }
        let authorization = match (change, governors.is_empty()) {
            (Some(change), false) => {
                let Some(authorization) = governance::authorize(ctx, planned, &governors, &change, diags).await else {
                    return prior.clone();
                };
                Some(authorization)
            }
            _ => None,
        };
        let (before, after) = (copied_to(prior), copied_to(planned));
        let kept: Vec<String> = after.iter().filter(|r| before.contains(r)).cloned().collect();
        let accounts = shared_with(planned);
        if shared_with(prior) != accounts {
            copies::share(ctx, id, None, &accounts, diags).await;
            for region in &kept {
                if !diags.has_errors() {
                    copies::share(ctx, id, Some(region), &accounts, diags).await;
                }
            }
            if diags.has_errors() {
                return prior.clone();
            }
        }
        // What exists, kept up to date as copies go and come, so that a failure part-way
        // records exactly that: destroy and the next apply then start from the truth.
        let mut regions = before.clone();
        let mut copies = prior.get("regional_amis").as_map().cloned().unwrap_or_default();
        for region in before.iter().filter(|r| !after.contains(r)) {
            if !copies::delete_copies(ctx, id, std::slice::from_ref(region), diags).await {
                break;
            }
            regions.retain(|r| r != region);
            copies.remove(region);
        }
        if !diags.has_errors() {
            let added: Vec<String> = after.iter().filter(|r| !before.contains(r)).cloned().collect();
            for (region, copy) in copies::copy_to(ctx, id, &added, &accounts, diags).await {
                regions.push(region.clone());
                copies.insert(region, copy);
            }
        }
        if diags.has_errors() {
            let mut state = prior.clone();
            state.set(
                "copy_to_regions",
                Value::List(regions.iter().map(Value::string).collect()),
            );
            state.set("regional_amis", Value::Map(copies));
            record::replace(ctx, self.records(), prior, &state, diags).await;
            return state;
        }
        let mut state = planned.clone();
        if ctx.configured.cloud.regions().is_some() {
            state.set("regional_amis", Value::Map(copies));
        }
        match authorization {
            Some(authorization) => governance::record(ctx, authorization, id, &mut state, diags).await,
            None if !prior.get("policy_id").is_null() || !planned.get("policy_id").is_null() => {
                // Entering governance needs no approval; what was approved before stands.
                governance::keep(prior, &mut state);
            }
            None => governance::ungoverned(&mut state),
        }
        record::store_update(ctx, self.records(), prior, &state, diags).await
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) {
        let Some(id) = prior.get("id").as_str() else { return };
        if !copies::delete_copies(ctx, id, &copied_to(prior), diags).await {
            return;
        }
        if let Err(e) = ctx.configured.cloud.delete_image(id).await {
            diags.error("Cannot delete the image's artifacts", format!("{e}."));
            return;
        }
        record::remove(ctx, RecordKind::Image, id, diags).await;
        governance::record_destroy(ctx, prior, "safebox_image", diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Value {
        record::import(ctx, RecordKind::Image, id, &self.schema, diags).await
    }
}
