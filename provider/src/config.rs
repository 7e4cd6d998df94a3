//! The `provider "safebox"` block: its schema, its validation and the configured backend.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use safebox::attest::chain::TrustRoot;
use safebox::box_key::BoxKeyStore;
use safebox::cloud::{Cloud, CloudError};
use safebox::local::LocalCloud;
use safebox::store::{FolderStore, Store};

use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::framework::schema::{Attribute, Block, NestedBlock, Schema};
use crate::framework::types::Type;
use crate::framework::validators::{duration, http_url, int_between, not_blank, one_of, parse_duration};
use crate::framework::value::Value;
use crate::lease::{ApplyLease, LeaseSettings};

/// Where the local backend keeps its state when `state_dir` is not set.
pub const DEFAULT_STATE_DIR: &str = ".safebox";
/// The Object Lock retention the store's bucket must enforce when `audit_retention_days` is
/// not set: seven years, what banking regulators commonly ask audit records to be kept.
pub const DEFAULT_AUDIT_RETENTION_DAYS: i64 = 2555;
/// The longest retention S3 Object Lock allows (100 years).
const MAX_RETENTION_DAYS: i64 = 36_500;

/// The provider configuration's schema.
#[must_use]
pub fn schema() -> Schema {
    let endpoint = |name| {
        Attribute::optional(name, Type::String).validate(http_url(format!(
            "https://{name}.eu-west-1.amazonaws.com (or http://127.0.0.1:5000 for an emulator)"
        )))
    };
    Schema {
        version: 0,
        block: Block::new(vec![
            Attribute::optional("backend", Type::String)
                .describe("Where boxes run: `local` (default, this machine, simulated attestation) or `aws`.")
                .validate(one_of(&["local", "aws"])),
            Attribute::optional("state_dir", Type::String)
                .describe("The folder holding the provider's records and the audit log (and, on the local backend, images and boxes). Default `.safebox`, relative to Terraform's working directory.")
                .validate(not_blank()),
            Attribute::optional("region", Type::String).describe("AWS backend: the region (default: `AWS_REGION`). Credentials come from the standard AWS chain: environment, profiles, SSO, assume role.").validate(not_blank()),
            Attribute::optional("approvals_dir", Type::String)
                .describe("Folder whose `*.json` files hold signed approvals for governed changes.")
                .validate(not_blank()),
            Attribute::optional("audit_retention_days", Type::Number)
                .describe("With a `store`: the least default Object Lock retention (COMPLIANCE mode) the store's bucket must enforce, in days. Default 2555 (7 years).")
                .validate(int_between(1, MAX_RETENTION_DAYS)),
        ])
        .with_blocks(vec![
            NestedBlock::single(
                "endpoints",
                Block::new(vec![endpoint("ec2"), endpoint("ebs"), endpoint("kms")])
                    .describe("AWS backend: endpoint overrides (emulators, VPC endpoints)."),
            ),
            NestedBlock::single(
                "attestation",
                Block::new(vec![
                    Attribute::optional("trust_root_pem", Type::String)
                        .describe("PEM root certificate attestation chains must end in. Default: the embedded AWS Nitro Enclaves root G1, pinned by SHA-256."),
                    Attribute::optional("max_age", Type::String)
                        .describe("How old an attestation document may be, e.g. `10m` (the default).")
                        .validate(duration()),
                    Attribute::optional("allow_simulated", Type::Bool)
                        .describe("Trust the local backend's software attestation root. Must be set to true explicitly; never use it for production."),
                ])
                .describe("How attestation documents are verified."),
            ),
            NestedBlock::single(
                "store",
                Block::new(vec![
                    Attribute::optional("lease_duration", Type::String)
                        .describe("How long the apply lease holds unless renewed, e.g. `2m` (the default). The holder renews it every third of that; a run killed while holding it blocks others until it expires.")
                        .validate(duration()),
                    Attribute::optional("lease_wait", Type::String)
                        .describe("How long an apply waits for another run's lease before it fails naming the holder, e.g. `5m` (the default); `0s` fails at once.")
                        .validate(duration()),
                ])
                .with_blocks(vec![NestedBlock::single(
                    "s3",
                    Block::new(vec![
                        Attribute::required("bucket", Type::String)
                            .describe("The bucket: versioned, with Object Lock enabled and a default COMPLIANCE retention of at least `audit_retention_days`.")
                            .validate(not_blank()),
                        Attribute::optional("prefix", Type::String)
                            .describe("The prefix of every key, e.g. `prod/` (a `/` is added when missing). Default: none."),
                        Attribute::optional("region", Type::String)
                            .describe("The bucket's region. Default: the provider's `region`, then `AWS_REGION`.")
                            .validate(not_blank()),
                        Attribute::optional("endpoint", Type::String)
                            .describe("An S3 endpoint override (VPC endpoints, emulators); requests then use path-style addressing.")
                            .validate(http_url("https://s3.eu-west-1.amazonaws.com (or http://127.0.0.1:5000 for an emulator)")),
                    ])
                    .describe("The store in an S3 bucket."),
                )])
                .describe("Where records, approvals, the audit log and the apply lease are kept, when not in `state_dir`: a shared, write-once store for teams and CI."),
            ),
        ])
        .describe("Safebox: reproducible enclave images, attested boxes and M-of-N governance."),
    }
}

/// How old an attestation document may be when `max_age` is not set.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// The `attestation` block, resolved.
#[derive(Debug, Clone)]
pub struct AttestationSettings {
    /// An explicit root, replacing the pinned AWS root.
    pub trust_root: Option<TrustRoot>,
    /// Freshness limit.
    pub max_age: Duration,
    /// Whether the local backend's software root may be trusted.
    pub allow_simulated: bool,
}

/// The configured provider: what every resource operation works against.
pub struct Configured {
    /// The backend: images and boxes.
    pub cloud: Arc<dyn Cloud>,
    /// Records and the audit log.
    pub store: Arc<dyn Store>,
    /// The `state_dir`, by its canonical path.
    pub state_dir: PathBuf,
    /// How attestation documents are verified.
    pub attestation: AttestationSettings,
    /// Where signed approvals are collected.
    pub approvals_dir: Option<PathBuf>,
    /// The keys that sign requests to each box's agent (in `state_dir`).
    pub box_keys: BoxKeyStore,
    /// What this process saw of the audit log and wrote to it.
    pub audit: Mutex<crate::governance::AuditRun>,
    /// Held from a governed change's authorization to its audit entry, so that two changes
    /// Terraform applies in parallel never both use one approval.
    pub governed: Arc<tokio::sync::Mutex<()>>,
    /// The store's apply lease, taken before the first change this process applies.
    pub lease: ApplyLease,
}

/// What a configuration may ask of its backend beyond publishing images and running boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Sharing images with other accounts (`launch_permission_account_ids`).
    Sharing,
    /// Copying images to other regions (`copy_to_regions`).
    Regions,
    /// Keys released only to attested boxes (`safebox_sealed_key`).
    SealedKeys,
    /// Policy signers held in KMS (`kms_key_id`).
    KmsSigners,
}

impl Capability {
    /// Whether `cloud` offers it.
    fn offered_by(self, cloud: &dyn Cloud) -> bool {
        match self {
            Self::Sharing => cloud.sharing().is_some(),
            Self::Regions => cloud.regions().is_some(),
            Self::SealedKeys => cloud.sealed_keys().is_some(),
            Self::KmsSigners => cloud.kms_signers().is_some(),
        }
    }

    /// The diagnostic's summary, and what the backend cannot do and what to do instead.
    fn texts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Sharing => (
                "Launch permissions need",
                "share an image's AMIs with other AWS accounts",
                "Remove launch_permission_account_ids",
            ),
            Self::Regions => (
                "Copies to other regions need",
                "copy an image's AMIs to other AWS regions",
                "Remove copy_to_regions",
            ),
            Self::SealedKeys => (
                "safebox_sealed_key needs",
                "hold a sealed key, an AWS KMS key that KMS releases only against a Nitro attestation",
                "Remove this resource",
            ),
            Self::KmsSigners => (
                "KMS signers need",
                "read the KMS key of a signer given by kms_key_id",
                "Give the signer's public_key_pem instead",
            ),
        }
    }
}

impl Configured {
    /// Why the backend cannot do `capability` and what to do: `None` when it can.
    #[must_use]
    pub fn lacks(&self, capability: Capability) -> Option<(String, String)> {
        if capability.offered_by(&*self.cloud) {
            return None;
        }
        let (summary, cannot, instead) = capability.texts();
        Some((
            format!("{summary} the aws backend"),
            format!(
                "The {} backend cannot {cannot}. {instead}, or set backend = \"aws\" in the provider block.",
                self.cloud.name()
            ),
        ))
    }

    /// Reports at `path` (or the resource) what the backend cannot do; whether it can.
    pub fn require(&self, capability: Capability, path: Option<AttributePath>, diags: &mut Diagnostics) -> bool {
        let Some((summary, detail)) = self.lacks(capability) else {
            return true;
        };
        match path {
            Some(path) => diags.error_at(path, summary, detail),
            None => diags.error(summary, detail),
        }
        false
    }
}

/// Checks, without creating anything, that boxes of this backend can be verified.
///
/// # Errors
/// As [`attestation_root`].
pub fn attestation_trust_check(configured: &Configured) -> Result<(), String> {
    if configured.attestation.trust_root.is_none()
        && configured.cloud.simulated().is_some()
        && !configured.attestation.allow_simulated
    {
        return Err("the local backend's boxes are attested by a simulated root generated on this machine, which proves nothing about hardware. To use it anyway (development only), set `attestation { allow_simulated = true }` in the provider block".into());
    }
    Ok(())
}

/// Which root verifies the backend's boxes, and whether it is simulated.
///
/// # Errors
/// When the backend's boxes are simulated and simulation is not allowed: the message says how
/// to allow it and what that means.
pub fn attestation_root(configured: &Configured) -> Result<(TrustRoot, bool), String> {
    if let Some(root) = &configured.attestation.trust_root {
        return Ok((root.clone(), false));
    }
    attestation_trust_check(configured)?;
    match configured.cloud.simulated() {
        Some(simulated) => simulated
            .trust_root()
            .map(|root| (root, true))
            .map_err(|e| e.to_string()),
        None => Ok((TrustRoot::aws(), false)),
    }
}

/// The aws backend for `config`.
#[cfg(feature = "aws")]
async fn aws_backend(config: &Value, state_dir: &std::path::Path) -> Result<Arc<dyn Cloud>, CloudError> {
    use safebox_aws::{AwsCloud, AwsSettings, Endpoints};
    let endpoint = |service| config.get("endpoints").get(service).as_str().map(str::to_owned);
    let settings = AwsSettings {
        region: config
            .get("region")
            .as_str()
            .map(str::to_owned)
            .or_else(env_region)
            .unwrap_or_default(),
        endpoints: Endpoints {
            ec2: endpoint("ec2"),
            ebs: endpoint("ebs"),
            kms: endpoint("kms"),
        },
        state_dir: state_dir.to_path_buf(),
    };
    Ok(Arc::new(AwsCloud::connect(&settings).await))
}

/// The store in S3 that `s3` (the `store.s3` block) names.
#[cfg(feature = "aws")]
async fn s3_store(s3: &Value, region: String) -> Result<Arc<dyn Store>, String> {
    use safebox::store::BucketLocation;
    use safebox_aws::store::{s3_store, S3Settings};
    let text = |name| s3.get(name).as_str().map(str::to_owned);
    let location = BucketLocation::new(&text("bucket").unwrap_or_default(), &text("prefix").unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let settings = S3Settings {
        location,
        region,
        endpoint: text("endpoint"),
    };
    Ok(Arc::new(s3_store(&settings).await))
}

/// This provider was built without the S3 store ([`validate`] says so first).
#[cfg(not(feature = "aws"))]
async fn s3_store(_: &Value, _: String) -> Result<Arc<dyn Store>, String> {
    Err(format!("the S3 store needs the aws feature: {AWS_NOT_BUILT}"))
}

/// This provider was built without the aws backend ([`validate`] says so first).
#[cfg(not(feature = "aws"))]
async fn aws_backend(_: &Value, _: &std::path::Path) -> Result<Arc<dyn Cloud>, CloudError> {
    Err(CloudError::Unsupported {
        backend: "local",
        what: "stand in for the aws backend".into(),
        fix: AWS_NOT_BUILT,
    })
}

/// What to do when a provider built without the aws feature is pointed at `backend = "aws"`.
#[cfg(not(feature = "aws"))]
const AWS_NOT_BUILT: &str = "this provider was built without the aws feature (scripts/quickstart builds it so, for the local backend). Rebuild it with the feature: `cargo build -p terraform-provider-safebox` (the feature is on by default)";

/// Checks the configuration beyond per-attribute validators.
pub fn validate(config: &Value, diags: &mut Diagnostics) {
    #[cfg(not(feature = "aws"))]
    if config.get("backend").as_str() == Some("aws") {
        diags.error_at(
            AttributePath::attr_root("backend"),
            "The aws backend is not in this build",
            format!("backend = \"aws\" needs the aws feature: {AWS_NOT_BUILT}."),
        );
    }
    let store = config.get("store");
    if !store.is_null() && !store.is_unknown() {
        let s3 = store.get("s3");
        #[cfg(not(feature = "aws"))]
        if !s3.is_null() {
            diags.error_at(
                AttributePath::attr_root("store").attr("s3"),
                "The S3 store is not in this build",
                format!("store {{ s3 {{ ... }} }} needs the aws feature: {AWS_NOT_BUILT}. Or remove the store block to keep everything in state_dir."),
            );
        }
        if s3.is_null() {
            diags.error_at(
                AttributePath::attr_root("store"),
                "The store block needs an s3 block",
                "Say where the store is: store { s3 { bucket = \"bank-safebox-evidence\", prefix = \"prod/\" } }. Or remove the store block to keep everything in state_dir.",
            );
        } else if s3.get("region").is_null() && config.get("region").is_null() && env_region().is_none() {
            diags.error_at(
                AttributePath::attr_root("store").attr("s3").attr("region"),
                "The S3 store needs a region",
                "Set store.s3.region (or the provider's region) to the bucket's region, or export AWS_REGION. The provider never guesses a region: asking the instance metadata service would leave this machine.",
            );
        }
    }
    if config.get("backend").as_str() == Some("aws") && config.get("region").is_null() && env_region().is_none() {
        diags.error_at(
            AttributePath::attr_root("region"),
            "The aws backend needs a region",
            "Set region = \"eu-west-1\" (or your region) in the provider block, or export AWS_REGION. The provider never guesses a region: asking the instance metadata service would leave this machine.",
        );
    }
    if let Some(pem) = config.get("attestation").get("trust_root_pem").as_str() {
        if let Err(reason) = TrustRoot::from_pem(pem) {
            diags.error_at(
                AttributePath::attr_root("attestation").attr("trust_root_pem"),
                "Invalid trust root",
                format!("attestation.trust_root_pem must be one PEM certificate (-----BEGIN CERTIFICATE-----), the root that attestation certificate chains end in: {reason}."),
            );
        }
    }
}

/// The region from the environment (`AWS_REGION`, then `AWS_DEFAULT_REGION`).
fn env_region() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

fn attestation_settings(config: &Value) -> AttestationSettings {
    let block = config.get("attestation");
    AttestationSettings {
        trust_root: block
            .get("trust_root_pem")
            .as_str()
            .and_then(|pem| TrustRoot::from_pem(pem).ok()),
        max_age: block
            .get("max_age")
            .as_str()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(DEFAULT_MAX_AGE),
        allow_simulated: block.get("allow_simulated").as_bool().unwrap_or(false),
    }
}

/// Builds the backend from a validated configuration.
pub async fn configure(config: &Value, diags: &mut Diagnostics) -> Option<Configured> {
    validate(config, diags);
    for name in ["backend", "state_dir", "region"] {
        if config.get(name).is_unknown() {
            diags.error_at(
                AttributePath::attr_root(name),
                format!("{name} is not known yet"),
                format!("The provider's {name} must be known before planning; do not derive it from resources that are created in the same run."),
            );
        }
    }
    if !config.get("store").is_fully_known() {
        diags.error_at(
            AttributePath::attr_root("store"),
            "store is not known yet",
            "The provider's store must be known before planning; do not derive it from resources that are created in the same run.",
        );
    }
    if diags.has_errors() {
        return None;
    }
    let state_dir = PathBuf::from(config.get("state_dir").as_str().unwrap_or(DEFAULT_STATE_DIR));
    // Boxes on the local backend run this very binary in its agent mode, so the agent is
    // always the one this provider was built with.
    let agent = std::env::current_exe()
        .map(|exe| vec![exe.into_os_string(), "agent".into()])
        .unwrap_or_default();
    let opened = async {
        // The same folder however it is written: records, box keys and boxes follow it.
        let folder = FolderStore::open(&state_dir)?;
        let state_dir = folder.root().to_path_buf();
        let cloud: Arc<dyn Cloud> = if config.get("backend").as_str() == Some("aws") {
            aws_backend(config, &state_dir).await?
        } else {
            Arc::new(LocalCloud::open(&state_dir)?.with_agent_command(agent))
        };
        Ok::<_, CloudError>((folder, cloud, state_dir))
    };
    let (folder, cloud, state_dir) = match opened.await {
        Ok(opened) => opened,
        Err(e) => {
            diags.error_at(
                AttributePath::attr_root("state_dir"),
                "Cannot open the state directory",
                format!("{e}. Point state_dir at a folder this user can create and write."),
            );
            return None;
        }
    };
    let store = open_store(config, folder, diags).await?;
    Some(Configured {
        cloud,
        lease: ApplyLease::new(Arc::clone(&store), lease_settings(config)),
        store,
        attestation: attestation_settings(config),
        approvals_dir: config.get("approvals_dir").as_str().map(PathBuf::from),
        box_keys: BoxKeyStore::new(&state_dir),
        state_dir,
        audit: Mutex::new(crate::governance::AuditRun::default()),
        governed: Arc::new(tokio::sync::Mutex::new(())),
    })
}

/// The store the configuration names: `folder` (the `state_dir`) without a `store` block;
/// else the bucket, once its versioning and Object Lock are checked. Errors are reported at
/// `store.s3.bucket`.
async fn open_store(config: &Value, folder: FolderStore, diags: &mut Diagnostics) -> Option<Arc<dyn Store>> {
    let s3 = config.get("store").get("s3");
    if s3.is_null() {
        return Some(Arc::new(folder));
    }
    let at = || AttributePath::attr_root("store").attr("s3").attr("bucket");
    let region = [s3.get("region"), config.get("region")]
        .iter()
        .find_map(|v| v.as_str().map(str::to_owned))
        .or_else(env_region)
        .unwrap_or_default();
    let store = match s3_store(s3, region).await {
        Ok(store) => store,
        Err(reason) => {
            diags.error_at(at(), "Invalid store location", format!("{reason}."));
            return None;
        }
    };
    let retention = config
        .get("audit_retention_days")
        .as_i64()
        .unwrap_or(DEFAULT_AUDIT_RETENTION_DAYS);
    match store.check_protection(retention).await {
        Ok(()) => Some(store),
        Err(e @ CloudError::Unprotected { .. }) => {
            diags.error_at(
                at(),
                "The store's bucket is not write-once",
                format!("{e}. The audit log must be kept write-once (S3 Object Lock in compliance mode), so nothing is planned or applied with this store until the bucket is fixed."),
            );
            None
        }
        Err(e) => {
            diags.error_at(
                at(),
                "Cannot read the store's bucket configuration",
                format!("{e}. The provider checks the bucket's versioning and Object Lock before it uses the store: the identity Terraform runs as needs s3:GetBucketVersioning and s3:GetBucketObjectLockConfiguration on it (docs/guides/ci.md)."),
            );
            None
        }
    }
}

/// The `store` block's lease settings, or their defaults.
fn lease_settings(config: &Value) -> LeaseSettings {
    let store = config.get("store");
    let setting = |name, default| {
        store
            .get(name)
            .as_str()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(default)
    };
    let defaults = LeaseSettings::default();
    LeaseSettings {
        duration: setting("lease_duration", defaults.duration),
        wait: setting("lease_wait", defaults.wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider block of `backend` in eu-west-1 and `store`.
    fn block(backend: &str, store: Value) -> Value {
        Value::object([
            ("backend", Value::string(backend)),
            ("region", Value::string("eu-west-1")),
            ("store", store),
        ])
    }

    #[cfg(not(feature = "aws"))]
    #[test]
    fn a_build_without_aws_refuses_the_aws_backend_and_the_s3_store_naming_the_feature() {
        let mut diags = Diagnostics::default();
        let s3 = Value::object([("s3", Value::object([("bucket", Value::string("evidence"))]))]);
        validate(&block("aws", s3), &mut diags);
        let found: Vec<String> = diags
            .as_slice()
            .iter()
            .map(|d| format!("{} {:?}: {}", d.summary, d.path, d.detail))
            .collect();
        let backend = found
            .iter()
            .find(|d| d.starts_with("The aws backend is not in this build"));
        let store = found
            .iter()
            .find(|d| d.starts_with("The S3 store is not in this build"));
        for (diag, attribute) in [(backend, "backend"), (store, "s3")] {
            let diag = diag.unwrap_or_else(|| panic!("no diagnostic for {attribute}: {found:?}"));
            assert!(diag.contains(attribute) && diag.contains("the aws feature"), "{diag}");
            assert!(diag.contains("cargo build -p terraform-provider-safebox"), "{diag}");
        }
    }

    #[cfg(feature = "aws")]
    #[test]
    fn a_build_with_aws_takes_the_aws_backend() {
        let mut diags = Diagnostics::default();
        validate(&block("aws", Value::Null), &mut diags);
        assert!(!diags.has_errors(), "{:?}", diags.as_slice());
    }
}
