//! # The `aws` backend
//!
//! [`AwsCloud`] implements the core's [`Cloud`] trait with the official AWS SDK for Rust:
//!
//! - images become AMIs: each variant's EIF, with the manifest and seal proof, is laid out on a
//!   deterministic payload disk ([`safebox::image::disk`]) and uploaded as an EBS snapshot through
//!   the EBS direct APIs ([`upload`]), then registered as a UEFI, TPM 2.0, IMDSv2-only, ENA AMI
//!   ([`images`]);
//! - boxes are Nitro Enclaves-enabled EC2 instances ([`boxes`]);
//! - sealed keys are KMS keys whose policy releases them only to attested enclaves, and policy
//!   signers may be KMS keys ([`keys`]).
//!
//! Everything this backend creates carries `safebox:*` tags, so a retried or interrupted apply
//! finds what an earlier attempt made instead of making it twice. Records (what Terraform
//! created, for refresh and import) and the audit log stay in the provider's `state_dir`, as on
//! the local backend.
//!
//! The SDK crates are compiled here only: no other crate of the workspace depends on them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use safebox::attest::chain::TrustRoot;
use safebox::cloud::{
    BoxInstance, BoxSpec, Cloud, CloudError, ExpectedArtifacts, PublishedImage, RecordKind, SealedKey,
};
use safebox::govern::audit::{AuditEntry, AuditHead};
use safebox::govern::keys::PublicKey;
use safebox::image::build::ImageBuild;
use safebox::local::LocalCloud;

pub mod boxes;
pub mod images;
pub mod keys;
pub mod upload;

/// Endpoint overrides for emulators and VPC endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// EC2.
    pub ec2: Option<String>,
    /// EBS direct APIs.
    pub ebs: Option<String>,
    /// KMS.
    pub kms: Option<String>,
}

/// What the provider configuration says about AWS.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// The region every call goes to.
    pub region: String,
    /// Endpoint overrides.
    pub endpoints: Endpoints,
    /// Where records, the audit log and the build cache live.
    pub state_dir: PathBuf,
}

/// How many attempts an AWS call gets (throttling, 5xx and transport errors are retried with
/// exponential backoff and jitter).
pub const MAX_ATTEMPTS: u32 = 8;
/// How long one attempt may take before it is abandoned and retried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one call may take across all its attempts.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The AWS backend.
pub struct AwsCloud {
    local: LocalCloud,
    ec2: aws_sdk_ec2::Client,
    ebs: aws_sdk_ebs::Client,
    kms: aws_sdk_kms::Client,
    region: String,
    endpoints: Endpoints,
}

impl fmt::Debug for AwsCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCloud")
            .field("region", &self.region)
            .field("state_dir", &self.local.root())
            .finish_non_exhaustive()
    }
}

/// The SDK configuration: the standard credential chain (environment, profiles, SSO, assume
/// role, container and instance credentials), the given region, bounded retries and timeouts.
pub async fn sdk_config(region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(100))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// The three SDK clients, for `region`, at the given endpoints.
#[derive(Debug, Clone)]
pub struct Clients {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// EBS direct APIs.
    pub ebs: aws_sdk_ebs::Client,
    /// KMS.
    pub kms: aws_sdk_kms::Client,
}

impl Clients {
    /// Clients sharing one [`sdk_config`]. Nothing is called until the first operation.
    pub async fn new(region: &str, endpoints: &Endpoints) -> Self {
        let sdk = sdk_config(region).await;
        let mut ec2 = aws_sdk_ec2::config::Builder::from(&sdk);
        if let Some(url) = &endpoints.ec2 {
            ec2 = ec2.endpoint_url(url);
        }
        let mut ebs = aws_sdk_ebs::config::Builder::from(&sdk);
        if let Some(url) = &endpoints.ebs {
            ebs = ebs.endpoint_url(url);
        }
        let mut kms = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(url) = &endpoints.kms {
            kms = kms.endpoint_url(url);
        }
        Self {
            ec2: aws_sdk_ec2::Client::from_conf(ec2.build()),
            ebs: aws_sdk_ebs::Client::from_conf(ebs.build()),
            kms: aws_sdk_kms::Client::from_conf(kms.build()),
        }
    }
}

impl AwsCloud {
    /// Connects to AWS as `settings` say. Nothing is called until the first operation.
    ///
    /// # Errors
    /// [`CloudError::Io`] when the `state_dir` cannot be created.
    pub async fn connect(settings: &AwsSettings) -> Result<Self, CloudError> {
        let local = LocalCloud::open(&settings.state_dir)?;
        let Clients { ec2, ebs, kms } = Clients::new(&settings.region, &settings.endpoints).await;
        Ok(Self {
            local,
            ec2,
            ebs,
            kms,
            region: settings.region.clone(),
            endpoints: settings.endpoints.clone(),
        })
    }

    /// The same backend in `region`: same records and endpoint overrides.
    ///
    /// # Errors
    /// [`CloudError::Io`] when the `state_dir` cannot be opened.
    pub async fn regional(&self, region: &str) -> Result<Self, CloudError> {
        Self::connect(&AwsSettings {
            region: region.to_owned(),
            endpoints: self.endpoints.clone(),
            state_dir: self.state_dir().to_path_buf(),
        })
        .await
    }

    /// The `state_dir` holding records and the audit log.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        self.local.root()
    }
}

/// Turns an SDK error into a [`CloudError::Api`] that names the call and says what to do.
pub(crate) fn api_error<E, R>(
    operation: &str,
    error: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> CloudError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    let code = aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&error).unwrap_or("");
    let fix = match (&error, code) {
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => {
            "check that the endpoint is reachable from this machine (provider endpoints {} and region) and try again"
                .to_owned()
        }
        (_, c)
            if c.contains("AuthFailure")
                || c.contains("UnrecognizedClient")
                || c.contains("InvalidClientTokenId")
                || c.contains("ExpiredToken")
                || c.contains("SignatureDoesNotMatch") =>
        {
            "check the AWS credentials Terraform runs with (environment, profile or SSO session) and refresh them"
                .to_owned()
        }
        (_, c) if c.contains("AccessDenied") || c.contains("UnauthorizedOperation") => {
            format!("allow {operation} for the identity Terraform runs as (its IAM policy, or the key policy for KMS)")
        }
        (_, c) if c.contains("Throttl") || c.contains("RequestLimitExceeded") => {
            "the service kept throttling after every retry; apply again in a minute".to_owned()
        }
        _ => "apply again; nothing half-made is kept, and what finished is found and reused".to_owned(),
    };
    let reason = match aws_smithy_types::error::metadata::ProvideErrorMetadata::message(&error) {
        Some(message) if !code.is_empty() => format!("{code}: {message}"),
        _ => aws_smithy_types::error::display::DisplayErrorContext(&error).to_string(),
    };
    CloudError::Api {
        operation: operation.to_owned(),
        reason,
        fix,
    }
}

/// The tag every resource this backend creates carries, naming the record it belongs to.
pub const TAG_RECORD: &str = "safebox:record";
/// A resource's Safebox kind (`image`, `snapshot`, `box`, `sealed-key`).
pub const TAG_KIND: &str = "safebox:kind";

#[async_trait]
impl Cloud for AwsCloud {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn get_record(&self, kind: RecordKind, id: &str) -> Result<Option<Vec<u8>>, CloudError> {
        self.local.get_record(kind, id).await
    }

    async fn put_record(&self, kind: RecordKind, id: &str, body: &[u8]) -> Result<(), CloudError> {
        self.local.put_record(kind, id, body).await
    }

    async fn delete_record(&self, kind: RecordKind, id: &str) -> Result<(), CloudError> {
        self.local.delete_record(kind, id).await
    }

    async fn kms_public_key(&self, key_id: &str) -> Result<PublicKey, CloudError> {
        keys::public_key(&self.kms, key_id).await
    }

    fn build_cache_dir(&self) -> PathBuf {
        self.local.build_cache_dir()
    }

    async fn publish_image(&self, id: &str, build: &ImageBuild) -> Result<PublishedImage, CloudError> {
        images::publish(&self.ec2, &self.ebs, &self.build_cache_dir(), id, build).await
    }

    async fn check_image(&self, id: &str, expected: &ExpectedArtifacts) -> Result<Vec<String>, CloudError> {
        images::check(&self.ec2, id, expected).await
    }

    async fn share_image(&self, id: &str, account_ids: &[String]) -> Result<(), CloudError> {
        images::share(&self.ec2, id, account_ids).await
    }

    async fn delete_image(&self, id: &str) -> Result<(), CloudError> {
        images::delete(&self.ec2, id).await
    }

    fn region(&self) -> Option<&str> {
        Some(&self.region)
    }

    async fn copy_image(&self, id: &str, region: &str) -> Result<PublishedImage, CloudError> {
        let there = self.regional(region).await?;
        let route = images::CopyRoute {
            source: &self.ec2,
            source_region: &self.region,
            dest: &there.ec2,
            dest_region: region,
        };
        images::copy(&route, id).await
    }

    async fn in_region(&self, region: &str) -> Result<Box<dyn Cloud>, CloudError> {
        Ok(Box::new(self.regional(region).await?))
    }

    async fn launch_box(&self, id: &str, spec: &BoxSpec) -> Result<BoxInstance, CloudError> {
        boxes::launch(&self.ec2, id, spec).await
    }

    async fn find_box(&self, id: &str) -> Result<Option<BoxInstance>, CloudError> {
        boxes::find(&self.ec2, id).await
    }

    async fn terminate_box(&self, id: &str) -> Result<(), CloudError> {
        boxes::terminate(&self.ec2, id).await
    }

    async fn create_sealed_key(&self, id: &str, description: &str, policy: &str) -> Result<SealedKey, CloudError> {
        keys::create_sealed(&self.kms, id, description, policy).await
    }

    async fn sealed_key_policy(&self, key_id: &str) -> Result<Option<String>, CloudError> {
        keys::sealed_policy(&self.kms, key_id).await
    }

    async fn delete_sealed_key(&self, key_id: &str) -> Result<(), CloudError> {
        keys::delete_sealed(&self.kms, key_id).await
    }

    fn simulated_trust_root(&self) -> Result<Option<TrustRoot>, CloudError> {
        Ok(None)
    }

    async fn read_audit(&self) -> Result<String, CloudError> {
        self.local.read_audit().await
    }

    async fn append_audit(&self, entry: AuditEntry, floor: Option<&AuditHead>) -> Result<AuditHead, CloudError> {
        self.local.append_audit(entry, floor).await
    }
}
