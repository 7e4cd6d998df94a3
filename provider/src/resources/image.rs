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

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use safebox::cloud::{new_record_id, ArtifactKind, Cloud, RecordKind, Tagged};
use safebox::image::build::{BuildError, BuildOptions, ImageBuild};
use safebox::image::manifest::Measurements;
use safebox::image::spec::{is_sha256_hex, DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
use safebox::image::Variant;

use crate::framework::diag::Diagnostics;
use crate::framework::model::{fully_known, Model, StringList, StringMap, Tf};
use crate::framework::modifiers::{requires_replace, use_state_for_unknown, use_state_when_unchanged};
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, NestedBlock, Schema, Validator};
use crate::framework::timeouts::{limit, timeouts_block, CreateUpdateTimeouts};
use crate::framework::types::Type;
use crate::framework::validators::{check, not_blank, one_of, whole_number};
use crate::framework::value::Value;
use crate::governance::{self, attributes_digest, Change, GovernanceModel, PolicySource};
use crate::images::expected_artifacts;
use crate::record;
use crate::resource::{Ctx, Resource};
use safebox::govern::Action;

mod copies;

/// `artifact_status` when every published file still has its digest.
const INTACT: &str = "intact";
/// How long copying into `copy_to_regions` may take unless `timeouts` says otherwise.
const DEFAULT_COPY_TIMEOUT: Duration = Duration::from_secs(3600);
/// The attributes that are inputs of the build: what was built and measured stands while
/// none of them changes.
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
/// What is built and published stands while the inputs do not change.
const BUILT_FROM: &[&[&str]] = &[INPUTS];
/// The copies stand while neither the inputs nor the regions change.
const COPIED_FROM: &[&[&str]] = &[INPUTS, &["copy_to_regions"]];

crate::model! {
    /// A hash-pinned input file (`kernel`, `boot_stub`, `dev_access.sshd`).
    pub struct InputModel {
        /// Its path.
        source: Tf<String>,
        /// Its SHA-256.
        sha256: Tf<String>,
    }
}

crate::model! {
    /// A `layer` block.
    pub struct LayerModel {
        /// Its name.
        name: Tf<String>,
        /// A tar archive or a single file.
        source: Tf<String>,
        /// Its SHA-256.
        sha256: Tf<String>,
        /// Where a single file goes.
        destination: Tf<String>,
    }
}

crate::model! {
    /// The `dev_access` block.
    pub struct DevAccessModel {
        /// Who may log in.
        ssh_authorized_keys: StringList,
        /// The sshd binary.
        sshd: Tf<InputModel>,
    }
}

crate::model! {
    /// `dev_measurements` and `prod_measurements`.
    pub struct MeasurementsModel {
        /// The EIF's or the UKI's SHA-256.
        image_sha256: Tf<String>,
        /// EIF PCR0.
        pcr0: Tf<String>,
        /// EIF PCR1.
        pcr1: Tf<String>,
        /// EIF PCR2.
        pcr2: Tf<String>,
        /// NitroTPM PCR4.
        pcr4: Tf<String>,
        /// NitroTPM PCR7.
        pcr7: Tf<String>,
        /// NitroTPM PCR12.
        pcr12: Tf<String>,
        /// The bootable disk's SHA-256.
        disk_sha256: Tf<String>,
    }
}

impl From<&Measurements> for MeasurementsModel {
    fn from(m: &Measurements) -> Self {
        Self {
            image_sha256: Tf::string(&m.image_sha256),
            pcr0: m.pcr0.clone().into(),
            pcr1: m.pcr1.clone().into(),
            pcr2: m.pcr2.clone().into(),
            pcr4: m.pcr4.clone().into(),
            pcr7: m.pcr7.clone().into(),
            pcr12: m.pcr12.clone().into(),
            disk_sha256: m.disk_sha256.clone().into(),
        }
    }
}

crate::model! {
    /// A copy of the image in another region (`regional_amis`).
    pub struct AmiCopyModel {
        /// The development AMI there.
        dev_ami_id: Tf<String>,
        /// The production AMI there.
        prod_ami_id: Tf<String>,
    }
}

crate::model! {
    /// A `safebox_image`.
    pub struct ImageModel {
        /// The image's id.
        id: Tf<String>,
        /// Its name.
        name: Tf<String>,
        /// `eif` or `uki`.
        format: Tf<String>,
        /// The time every timestamp is clamped to.
        source_date_epoch: Tf<i64>,
        /// The kernel command line.
        cmdline: Tf<String>,
        /// SHA-256 of the build manifest.
        manifest_sha256: Tf<String>,
        /// The development image's measurements.
        dev_measurements: Tf<MeasurementsModel>,
        /// The production image's measurements.
        prod_measurements: Tf<MeasurementsModel>,
        /// SHA-256 of the seal proof.
        seal_proof_sha256: Tf<String>,
        /// local: the development artifact.
        dev_artifact: Tf<String>,
        /// local: the production artifact.
        prod_artifact: Tf<String>,
        /// aws: accounts that may launch the AMIs.
        launch_permission_account_ids: StringList,
        /// aws: regions the AMIs are copied to.
        copy_to_regions: StringList,
        /// The user's tags for the AMIs.
        tags: StringMap,
        /// aws: the copies, by region.
        regional_amis: Tf<BTreeMap<String, AmiCopyModel>>,
        /// aws: the development AMI.
        dev_ami_id: Tf<String>,
        /// aws: the production AMI.
        prod_ami_id: Tf<String>,
        /// aws: the production snapshot's LINEAR checksum.
        snapshot_linear_sha256: Tf<String>,
        /// aws: the development snapshot's LINEAR checksum.
        dev_snapshot_linear_sha256: Tf<String>,
        /// `intact`, or what changed.
        artifact_status: Tf<String>,
        /// The kernel.
        kernel: Tf<InputModel>,
        /// `uki`: the EFI stub.
        boot_stub: Tf<InputModel>,
        /// The layers, in order.
        layer: Tf<Vec<LayerModel>>,
        /// SSH access, development image only.
        dev_access: Tf<DevAccessModel>,
        /// How long copying to `copy_to_regions` may take.
        timeouts: Tf<CreateUpdateTimeouts>,
    }
    embed {
        /// Its governance.
        governance: GovernanceModel,
    }
}

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
    check("A SHA-256 digest: 64 hex digits.", |value: &Value| {
        match value.as_str() {
            Some(s) if is_sha256_hex(s) => Ok(()),
            _ => Err("must be a SHA-256 digest: 64 hex digits, e.g. the output of `sha256sum FILE`".into()),
        }
    })
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
                .modify(use_state_for_unknown()),
            Attribute::required("name", Type::String)
                .describe("The image's name.")
                .validate(not_blank())
                .modify(requires_replace()),
            Attribute::with_default("format", Type::String, Value::string("eif"))
                .describe("`eif` (default): a Nitro Enclave Image File, measured by PCR0, PCR1 and PCR2. `uki`: an attestable disk image (a Unified Kernel Image on a GPT disk whose EFI System Partition boots it), measured by NitroTPM PCR4, PCR7 and PCR12; needs `boot_stub`.")
                .validate(one_of(&["eif", "uki"]))
                .modify(requires_replace()),
            Attribute::with_default("source_date_epoch", Type::Number, Value::int(0))
                .describe("Every timestamp in the image is clamped to this time (seconds since 1970). Default 0.")
                .validate(whole_number())
                .modify(requires_replace()),
            Attribute::with_default("cmdline", Type::String, Value::string(""))
                .describe("The kernel command line.")
                .modify(requires_replace()),
            Attribute::computed("manifest_sha256", Type::String)
                .modify(use_state_when_unchanged(BUILT_FROM))
                .describe("SHA-256 of the build manifest (inputs and the digests they produce)."),
            Attribute::computed("dev_measurements", measurements_type())
                .modify(use_state_when_unchanged(BUILT_FROM))
                .describe("The development image: `image_sha256` (the EIF's, or the UKI's), and for `eif` PCRs `pcr0`, `pcr1`, `pcr2`, for `uki` NitroTPM `pcr4`, `pcr7`, `pcr12` (SHA-384, standard boot) and `disk_sha256` (the raw disk); what a format does not have is null."),
            Attribute::computed("prod_measurements", measurements_type())
                .modify(use_state_when_unchanged(BUILT_FROM))
                .describe("The production image, as `dev_measurements`."),
            Attribute::computed("seal_proof_sha256", Type::String).modify(use_state_when_unchanged(BUILT_FROM)).describe(
                "SHA-256 of the seal proof showing the production image is the development image minus its SSH layer.",
            ),
            Attribute::computed("dev_artifact", Type::String)
                .modify(use_state_when_unchanged(BUILT_FROM))
                .describe("local backend: path of the development EIF, or of its bootable disk for `uki`."),
            Attribute::computed("prod_artifact", Type::String)
                .modify(use_state_when_unchanged(BUILT_FROM))
                .describe("local backend: path of the production EIF, or of its bootable disk for `uki`."),
            Attribute::optional("launch_permission_account_ids", Type::list(Type::String))
                .describe("aws backend: AWS accounts (auditors, say) that may launch both AMIs. Changes in place.")
                .validate(copies::account_ids()),
            Attribute::optional("copy_to_regions", Type::set(Type::String))
                .describe("aws backend: other regions both AMIs are copied to (`CopyImage`), tagged and shared like the originals. Changes in place.")
                .validate(copies::region_names()),
            crate::tags::attribute(),
            Attribute::computed(
                "regional_amis",
                Type::map(Type::object([("dev_ami_id", Type::String), ("prod_ami_id", Type::String)])),
            )
            .modify(use_state_when_unchanged(COPIED_FROM))
            .describe("aws backend: the copies, by region: `dev_ami_id` and `prod_ami_id`."),
            Attribute::computed("dev_ami_id", Type::String).modify(use_state_when_unchanged(BUILT_FROM)).describe("aws backend: the development image's AMI."),
            Attribute::computed("prod_ami_id", Type::String).modify(use_state_when_unchanged(BUILT_FROM)).describe("aws backend: the production image's AMI."),
            Attribute::computed("snapshot_linear_sha256", Type::String).modify(use_state_when_unchanged(BUILT_FROM)).describe(
                "aws backend: the LINEAR aggregate SHA-256 (hex) of the production AMI's snapshot, as sent to EBS with CompleteSnapshot: SHA-256 over the SHA-256 of every non-zero 512 KiB block in block order.",
            ),
            Attribute::computed("dev_snapshot_linear_sha256", Type::String)
                .modify(use_state_when_unchanged(BUILT_FROM))
                .describe("aws backend: the same for the development AMI's snapshot."),
            Attribute::computed("artifact_status", Type::String)
                .describe("`intact`, or which published file changed or went missing (which replaces the image).")
                .modify(requires_replace()),
        ];
        attributes.extend(governance::attributes(PolicySource::Own));
        let block = Block::new(attributes)
        .with_blocks(vec![
            NestedBlock::single("kernel", input_block().describe("The kernel image, hash-pinned."))
                .required()
                .modify(requires_replace()),
            NestedBlock::single(
                "boot_stub",
                input_block().describe("`uki` only: the EFI stub the Unified Kernel Image is built on (systemd's `linuxx64.efi.stub`), hash-pinned."),
            )
            .modify(requires_replace()),
            NestedBlock::list("layer", layer, 1).modify(requires_replace()),
            NestedBlock::single("dev_access", dev_access.describe("SSH access, in the development image only."))
                .modify(requires_replace()),
            timeouts_block(
                &["create", "update"],
                "aws backend: how long copying the AMIs into `copy_to_regions` may take, on create and on update (default 60m). A copy still pending then is deleted and apply fails, keeping the copies already made.",
            ),
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

impl InputModel {
    fn input(&self) -> InputRef {
        InputRef {
            source: self.source.as_deref().unwrap_or_default().to_owned(),
            sha256: self.sha256.as_deref().unwrap_or_default().to_owned(),
        }
    }
}

impl ImageModel {
    /// The build inputs, to tell whether any changed.
    fn inputs(&self) -> impl PartialEq + '_ {
        (
            (&self.name, &self.format, &self.source_date_epoch, &self.cmdline),
            (&self.kernel, &self.boot_stub, &self.layer, &self.dev_access),
        )
    }

    /// The specification, if every input is known.
    fn spec(&self) -> Option<ImageSpec> {
        let known = fully_known(&self.name)
            && fully_known(&self.format)
            && fully_known(&self.source_date_epoch)
            && fully_known(&self.cmdline)
            && fully_known(&self.kernel)
            && fully_known(&self.boot_stub)
            && fully_known(&self.layer)
            && fully_known(&self.dev_access);
        if !known {
            return None;
        }
        let input = |i: &Tf<InputModel>| {
            i.known()
                .map_or_else(|| InputModel::default().input(), InputModel::input)
        };
        Some(ImageSpec {
            name: self.name.as_deref().unwrap_or_default().to_owned(),
            format: self.format.as_deref().and_then(ImageFormat::parse).unwrap_or_default(),
            boot_stub: self.boot_stub.known().map(InputModel::input),
            source_date_epoch: self.source_date_epoch.known().copied().unwrap_or(0),
            kernel: input(&self.kernel),
            cmdline: self.cmdline.as_deref().unwrap_or_default().to_owned(),
            layers: self
                .layer
                .items()
                .iter()
                .map(|l| LayerSpec {
                    name: l.name.as_deref().unwrap_or_default().to_owned(),
                    input: InputRef {
                        source: l.source.as_deref().unwrap_or_default().to_owned(),
                        sha256: l.sha256.as_deref().unwrap_or_default().to_owned(),
                    },
                    destination: l.destination.known().cloned(),
                })
                .collect(),
            dev_access: self.dev_access.known().map(|dev| DevAccessSpec {
                ssh_authorized_keys: dev.ssh_authorized_keys.strings().unwrap_or_default(),
                sshd: input(&dev.sshd),
            }),
        })
    }

    /// The accounts that may launch the image.
    fn accounts(&self) -> Vec<String> {
        self.launch_permission_account_ids.strings().unwrap_or_default()
    }

    /// The regions the image is copied to.
    fn regions(&self) -> Vec<String> {
        self.copy_to_regions.strings().unwrap_or_default()
    }

    /// What publishing the image makes available: its manifest names every byte of both
    /// images; with it, who may launch them and where they are copied.
    fn distribution(&self) -> serde_json::Value {
        serde_json::json!({
            "launch_permission_account_ids": self.accounts(),
            "copy_to_regions": sorted(self.regions()),
        })
    }

    /// This value with the build's digests filled in.
    fn with_build(&self, build: &ImageBuild) -> Self {
        Self {
            manifest_sha256: Tf::string(build.manifest_sha256()),
            seal_proof_sha256: Tf::string(build.seal_proof_sha256()),
            dev_measurements: Tf::Known(build.measurements(Variant::Dev).into()),
            prod_measurements: Tf::Known(build.measurements(Variant::Prod).into()),
            artifact_status: Tf::string(INTACT),
            ..self.clone()
        }
    }

    /// Nulls what a backend publishing `kind` never sets.
    fn null_unset(&mut self, kind: ArtifactKind) {
        match kind {
            ArtifactKind::File => {
                self.dev_ami_id = Tf::Null;
                self.prod_ami_id = Tf::Null;
                self.snapshot_linear_sha256 = Tf::Null;
                self.dev_snapshot_linear_sha256 = Tf::Null;
            }
            ArtifactKind::MachineImage => {
                self.dev_artifact = Tf::Null;
                self.prod_artifact = Tf::Null;
            }
        }
    }
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

/// The governed change of publishing the image planned in `value`.
fn publish_change(value: &ImageModel) -> Option<Change> {
    let manifest = value.manifest_sha256.as_deref()?;
    if !fully_known(&value.launch_permission_account_ids) || !fully_known(&value.copy_to_regions) {
        return None;
    }
    Some(Change::create(
        Action::ImagePublish,
        "safebox_image",
        attributes_digest(&serde_json::json!({ "manifest_sha256": manifest, "distribution": value.distribution() })),
    ))
}

/// The governed change of an in-place update from `prior` to `planned`, under the policy that
/// governs it (the prior one), if the update is governed: sharing or copying it otherwise
/// (`image.share`), or moving it to another policy (`image.publish`). Both at once is refused.
fn update_change(prior: &ImageModel, planned: &ImageModel, diags: &mut Diagnostics) -> Option<Change> {
    let id = prior.id.as_deref()?;
    let moved = prior.governance.policy_id != planned.governance.policy_id;
    let reshared = prior.distribution() != planned.distribution();
    if moved && reshared {
        diags.error_at(
            AttributePath::attr_root("policy_id"),
            "Two governed changes at once",
            "This update moves the image to another policy and changes who may launch it or where it is copied. Each is approved on its own: apply one, then the other.",
        );
        return None;
    }
    if moved {
        return governance::move_change(
            Action::ImagePublish,
            "safebox_image",
            id,
            &prior.governance,
            &planned.governance,
        );
    }
    reshared.then(|| {
        Change::update(
            Action::ImageShare,
            "safebox_image",
            id,
            attributes_digest(&prior.distribution()),
            attributes_digest(&planned.distribution()),
        )
    })
}

/// Refuses a build whose digests are not the ones the plan showed: what apply publishes is
/// byte for byte what plan measured.
fn check_planned(planned: &ImageModel, build: &ImageBuild, diags: &mut Diagnostics) {
    let built = planned.with_build(build);
    let pairs = [
        (
            "manifest_sha256",
            planned.manifest_sha256.to_value(),
            built.manifest_sha256.to_value(),
        ),
        (
            "seal_proof_sha256",
            planned.seal_proof_sha256.to_value(),
            built.seal_proof_sha256.to_value(),
        ),
        (
            "dev_measurements",
            planned.dev_measurements.to_value(),
            built.dev_measurements.to_value(),
        ),
        (
            "prod_measurements",
            planned.prod_measurements.to_value(),
            built.prod_measurements.to_value(),
        ),
    ];
    for (name, shown, now) in pairs {
        if shown.is_fully_known() && !shown.is_null() && shown != now {
            diags.error_at(
                AttributePath::attr_root(name),
                "The image differs from the plan",
                format!(
                    "The plan showed {name} = {}, but the build now gives {}: an input or the build cache changed since the plan. Nothing was published; run terraform plan again and review the new measurements.",
                    shown.to_json(),
                    now.to_json()
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
        let actual = std::fs::File::open(path).and_then(safebox::image::sha256_hex);
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
    type Model = ImageModel;

    fn type_name(&self) -> &'static str {
        "safebox_image"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn validate(&self, config: &ImageModel, diags: &mut Diagnostics) {
        // Defaults are not applied to configuration; check with them.
        let mut config = config.clone();
        if config.source_date_epoch.is_null() {
            config.source_date_epoch = Tf::Known(0);
        }
        if config.cmdline.is_null() {
            config.cmdline = Tf::string("");
        }
        if config.format.is_null() {
            config.format = Tf::string("eif");
        }
        if let Some(Err(errors)) = config.spec().map(|spec| spec.check()) {
            report(&BuildError::Spec(errors), diags);
        }
    }

    async fn plan(
        &self,
        ctx: &Ctx,
        prior: Option<&ImageModel>,
        planned: &mut ImageModel,
        diags: &mut Diagnostics,
    ) -> Vec<AttributePath> {
        let cloud = &ctx.configured.cloud;
        if !copies::plan(ctx, &planned.accounts(), &planned.regions(), diags) {
            return Vec::new();
        }
        // What this backend never sets is null, not "known after apply".
        planned.null_unset(cloud.artifact_kind());
        if cloud.regions().is_none() {
            planned.regional_amis = Tf::Null;
        }
        if let Some(prior) = prior.filter(|prior| prior.inputs() == planned.inputs()) {
            // Same inputs, same images: what was measured and approved stands (the plan
            // modifiers kept it); only the published files' state can differ, and a damaged
            // file replaces the image.
            governance::check_anchor(ctx, &prior.governance.change, diags).await;
            if let Some(spec) = planned.spec() {
                warn_changed_inputs(&spec, diags);
            }
            planned.artifact_status = Tf::string(INTACT);
            governance::keep(&prior.governance.change, &mut planned.governance.change);
            let Some(governors) =
                governance::update_governors(ctx, &prior.governance, &planned.governance, diags).await
            else {
                return Vec::new();
            };
            if let (Some(change), false) = (update_change(prior, planned, diags), governors.is_empty()) {
                governance::plan(ctx, &mut planned.governance.change, &governors, change, diags).await;
            }
            return Vec::new();
        }
        // A destroy run plans would-be creates too, and creates nothing: it builds nothing.
        if let Some(spec) = planned
            .spec()
            .filter(|_| !(prior.is_none() && crate::run::is_destroy()))
        {
            if let Some(build) = self.build(ctx, &spec, diags) {
                *planned = planned.with_build(&build);
            }
        }
        match planned.governance.policy_id.clone() {
            Tf::Null => governance::ungoverned(&mut planned.governance.change),
            Tf::Known(policy_id) => {
                if let Some(governor) = governance::governor(ctx, &policy_id, "policy_id", diags).await {
                    match publish_change(planned) {
                        Some(change) => {
                            governance::plan(ctx, &mut planned.governance.change, &[governor], change, diags).await;
                        }
                        None => {
                            governance::pending(&mut planned.governance.change, &governor, Action::ImagePublish, diags)
                        }
                    }
                }
            }
            Tf::Unknown => governance::unknown(&mut planned.governance.change),
        }
        Vec::new()
    }

    async fn create(
        &self,
        ctx: &Ctx,
        planned: &ImageModel,
        _config: &ImageModel,
        diags: &mut Diagnostics,
    ) -> Option<ImageModel> {
        let Some(spec) = planned.spec() else {
            diags.error(
                "Image inputs unknown at apply",
                "Every input of safebox_image must be known when it is applied.",
            );
            return None;
        };
        let build = self.build(ctx, &spec, diags)?;
        check_planned(planned, &build, diags);
        if diags.has_errors() {
            return None;
        }
        let mut state = planned.with_build(&build);
        let governor = match planned.governance.policy_id.as_deref() {
            Some(policy_id) => Some(governance::governor(ctx, policy_id, "policy_id", diags).await?),
            None => None,
        };
        let change = publish_change(&state).map(Some).ok_or((
            "Image unknown at apply",
            "Every argument of a governed safebox_image must be known when it is applied.",
        ));
        let authorization = governance::authorize_create(ctx, governor.as_ref(), change, &mut state.governance, diags)
            .await
            .ok()?;
        let id = new_record_id("img");
        let cloud = &ctx.configured.cloud;
        let published = match block_on(cloud.publish_image(&id, &build, &crate::tags::of(&planned.tags))) {
            Ok(published) => published,
            Err(e) => {
                diags.error("Cannot publish the image", format!("{e}."));
                return None;
            }
        };
        state.id = Tf::string(&id);
        let kind = cloud.artifact_kind();
        state.null_unset(kind);
        let (dev, prod) = match kind {
            ArtifactKind::MachineImage => (&mut state.dev_ami_id, &mut state.prod_ami_id),
            ArtifactKind::File => (&mut state.dev_artifact, &mut state.prod_artifact),
        };
        *dev = Tf::string(published.dev_artifact);
        *prod = Tf::string(published.prod_artifact);
        if let Some((dev_linear, prod_linear)) = published.snapshot_linear_sha256 {
            state.dev_snapshot_linear_sha256 = Tf::string(dev_linear);
            state.snapshot_linear_sha256 = Tf::string(prod_linear);
        }
        let accounts = state.accounts();
        if !accounts.is_empty() {
            copies::share(ctx, &id, None, &accounts, diags).await;
        }
        let regions = state.regions();
        state.regional_amis = if !diags.has_errors() && cloud.regions().is_some() {
            Tf::Known(
                copies::copy_to(
                    ctx,
                    &id,
                    (&regions, &accounts),
                    &copies::Allowed {
                        duration: limit(&planned.timeouts, |t| &t.create, DEFAULT_COPY_TIMEOUT),
                        attribute: "timeouts.create",
                    },
                    diags,
                )
                .await
                .into_iter()
                .collect(),
            )
        } else {
            Tf::Null
        };
        if !diags.has_errors() {
            if let Some(authorization) = authorization {
                governance::record(ctx, authorization, &id, &mut state.governance.change, diags).await;
            }
        }
        if !diags.has_errors() {
            record::create(ctx, RecordKind::Image, &id, &state, diags).await;
        }
        if diags.has_errors() {
            // Best effort: the error that got here is the one to report.
            copies::delete_copies(ctx, &id, &regions, &mut Diagnostics::default()).await;
            let _ = cloud.delete_image(&id).await;
            return None;
        }
        build.discard();
        Some(state)
    }

    async fn read(&self, ctx: &Ctx, state: &ImageModel, diags: &mut Diagnostics) -> Option<ImageModel> {
        let id = state.id.as_deref()?;
        governance::check_anchor(ctx, &state.governance.change, diags).await;
        let mut stored = record::load_checked(ctx, self.records(), id, state, diags).await?;
        let cloud = &ctx.configured.cloud;
        let expected = expected_artifacts(&stored.to_value().to_json());
        let checked = match block_on(cloud.check_image(id, &expected)) {
            Ok(mut problems) => {
                let elsewhere = block_on(copies::check_copies(ctx, id, &stored.regions(), &expected, diags));
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
            Some(problems) if problems.is_empty() => stored.artifact_status = Tf::string(INTACT),
            Some(problems) => stored.artifact_status = Tf::string(problems.join("; ")),
            None => {}
        }
        Some(stored)
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &ImageModel,
        planned: &ImageModel,
        _config: &ImageModel,
        diags: &mut Diagnostics,
    ) -> ImageModel {
        // Every input replaces the image; who may launch it, where it is copied and which
        // policy governs it change in place.
        let Some(id) = prior.id.as_deref() else {
            return prior.clone();
        };
        let Some(governors) = governance::update_governors(ctx, &prior.governance, &planned.governance, diags).await
        else {
            return prior.clone();
        };
        let change = update_change(prior, planned, diags);
        if diags.has_errors() {
            return prior.clone();
        }
        let authorization = match (change, governors.is_empty()) {
            (Some(change), false) => {
                let Some(authorization) =
                    governance::authorize(ctx, &planned.governance.change, &governors, &change, diags).await
                else {
                    return prior.clone();
                };
                Some(authorization)
            }
            _ => None,
        };
        let (before, after) = (prior.regions(), planned.regions());
        let kept: Vec<String> = after.iter().filter(|r| before.contains(r)).cloned().collect();
        // Tags first, here and on the copies that stay: the copies made below take theirs from
        // the originals.
        if prior.tags != planned.tags {
            let mut regional = Vec::new();
            for region in &kept {
                let Some(cloud) = copies::in_region(ctx, region, diags).await else {
                    return prior.clone();
                };
                regional.push(cloud);
            }
            let clouds: Vec<&dyn Cloud> = std::iter::once(ctx.configured.cloud.as_ref())
                .chain(regional.iter().map(AsRef::as_ref))
                .collect();
            if !crate::tags::retag(&clouds, Tagged::Image(id), (&prior.tags, &planned.tags), diags).await {
                return prior.clone();
            }
        }
        let accounts = planned.accounts();
        if prior.accounts() != accounts {
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
        let mut copies = prior.regional_amis.known().cloned().unwrap_or_default();
        for region in before.iter().filter(|r| !after.contains(r)) {
            if !copies::delete_copies(ctx, id, std::slice::from_ref(region), diags).await {
                break;
            }
            regions.retain(|r| r != region);
            copies.remove(region);
        }
        if !diags.has_errors() {
            let added: Vec<String> = after.iter().filter(|r| !before.contains(r)).cloned().collect();
            let allowed = copies::Allowed {
                duration: limit(&planned.timeouts, |t| &t.update, DEFAULT_COPY_TIMEOUT),
                attribute: "timeouts.update",
            };
            for (region, copy) in copies::copy_to(ctx, id, (&added, &accounts), &allowed, diags).await {
                regions.push(region.clone());
                copies.insert(region, copy);
            }
        }
        if diags.has_errors() {
            let state = ImageModel {
                copy_to_regions: StringList::of(regions),
                regional_amis: Tf::Known(copies),
                ..prior.clone()
            };
            record::replace(ctx, self.records(), id, prior, &state, diags).await;
            return state;
        }
        let mut state = planned.clone();
        if ctx.configured.cloud.regions().is_some() {
            state.regional_amis = Tf::Known(copies);
        }
        match authorization {
            Some(authorization) => {
                governance::record(ctx, authorization, id, &mut state.governance.change, diags).await;
            }
            None if !prior.governance.policy_id.is_null() || !planned.governance.policy_id.is_null() => {
                // Entering governance needs no approval; what was approved before stands.
                governance::keep(&prior.governance.change, &mut state.governance.change);
            }
            None => governance::ungoverned(&mut state.governance.change),
        }
        record::store_update(ctx, (self.records(), id), prior, &state, diags).await
    }

    async fn delete(&self, ctx: &Ctx, prior: &ImageModel, diags: &mut Diagnostics) {
        let Some(id) = prior.id.as_deref() else { return };
        if !copies::delete_copies(ctx, id, &prior.regions(), diags).await {
            return;
        }
        if let Err(e) = ctx.configured.cloud.delete_image(id).await {
            diags.error("Cannot delete the image's artifacts", format!("{e}."));
            return;
        }
        record::remove(ctx, RecordKind::Image, id, diags).await;
        governance::record_destroy(ctx, ("safebox_image", id), &prior.governance, diags).await;
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Option<ImageModel> {
        record::import(ctx, RecordKind::Image, id, &self.schema, diags).await
    }
}
