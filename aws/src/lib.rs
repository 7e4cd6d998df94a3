//! # The `aws` backend
//!
//! [`AwsCloud`] implements the core's [`Cloud`] trait with the official AWS SDK for Rust:
//!
//! - images become AMIs: each variant's EIF, with the manifest and seal proof, is laid out on a
//!   deterministic payload disk ([`safebox::image::disk`]) and uploaded as an EBS snapshot through
//!   the EBS direct APIs ([`upload`]), then registered as a UEFI, TPM 2.0, IMDSv2-only, ENA AMI
//!   ([`images`]);
//! - boxes are EC2 instances with NitroTPM that boot a `"uki"` image's AMI ([`boxes`]); an
//!   `"eif"` image's AMI is a payload volume that does not boot, so its boxes are refused;
//! - sealed keys are KMS keys whose policy releases them only to attested enclaves, and policy
//!   signers may be KMS keys ([`keys`]);
//! - the store of records, approvals, the audit log and the apply lease may be an S3 bucket
//!   with Object Lock ([`store`]), for teams and CI.
//!
//! Everything this backend creates carries `safebox:*` tags, so a retried or interrupted apply
//! finds what an earlier attempt made instead of making it twice. Records (what Terraform
//! created, for refresh and import) and the audit log are not this backend's: they live in the
//! provider's [`safebox::store::Store`], which [`store::S3Store`] may put in S3 whatever the
//! backend.
//!
//! The SDK crates are compiled here only: no other crate of the workspace depends on them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use safebox::cloud::{
    ApiErrorKind, ArtifactKind, BoxInstance, BoxSpec, Boxes, Cloud, CloudError, ExpectedArtifacts, Images, KmsSigners,
    PublishedImage, Regions, SealedKey, SealedKeys, Sharing, Tagged, Tagging, Tags,
};
use safebox::govern::keys::PublicKey;
use safebox::image::build::ImageBuild;
use safebox::image::spec::ImageFormat;

pub mod boxes;
pub mod images;
pub mod keys;
pub mod store;
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
    /// The provider's `state_dir` (canonical), whose build cache this backend shares.
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
    state_dir: PathBuf,
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
            .field("state_dir", &self.state_dir)
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
    pub async fn connect(settings: &AwsSettings) -> Self {
        let Clients { ec2, ebs, kms } = Clients::new(&settings.region, &settings.endpoints).await;
        Self {
            state_dir: settings.state_dir.clone(),
            ec2,
            ebs,
            kms,
            region: settings.region.clone(),
            endpoints: settings.endpoints.clone(),
        }
    }

    /// The same backend in `region`, with the same endpoint overrides.
    pub async fn regional(&self, region: &str) -> Self {
        Self::connect(&AwsSettings {
            region: region.to_owned(),
            endpoints: self.endpoints.clone(),
            state_dir: self.state_dir.clone(),
        })
        .await
    }

    /// The provider's `state_dir`.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// What kind of failure the AWS error code `code` (or, for services that answer some errors
/// with a bare status, the HTTP status) reports. EC2 names a missing thing
/// `Invalid<Thing>.NotFound` and a busy one `Invalid<Thing>.InUse`; the other services use the
/// fixed codes listed.
fn kind_of(code: &str, status: Option<u16>) -> ApiErrorKind {
    let (_, suffix) = code.rsplit_once('.').unwrap_or(("", code));
    match (code, suffix, status) {
        (_, "NotFound", _)
        | (
            "NotFoundException"
            | "ResourceNotFoundException"
            | "InvalidAMIID.Unavailable"
            | "NoSuchKey"
            | "NoSuchBucket",
            _,
            _,
        )
        | ("", _, Some(404)) => ApiErrorKind::NotFound,
        (
            "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "SlowDown",
            _,
            _,
        )
        | ("", _, Some(429)) => ApiErrorKind::Throttled,
        (c, _, _) if credentials_refused(c) => ApiErrorKind::AccessDenied,
        ("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" | "OptInRequired", _, _)
        | ("", _, Some(403)) => ApiErrorKind::AccessDenied,
        (_, "InUse", _)
        | (
            "IncorrectState"
            | "IncorrectInstanceState"
            | "KMSInvalidStateException"
            | "ConflictException"
            | "ConditionalRequestConflict"
            | "PreconditionFailed"
            | "AlreadyExistsException"
            | "IdempotentParameterMismatch",
            _,
            _,
        )
        | ("", _, Some(409 | 412)) => ApiErrorKind::Conflict,
        _ => ApiErrorKind::Other,
    }
}

/// Whether `code` says the credentials themselves were refused (rather than what they may do).
fn credentials_refused(code: &str) -> bool {
    matches!(
        code,
        "AuthFailure"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "InvalidSignatureException"
            | "InvalidAccessKeyId"
    )
}

/// An EC2 tag.
pub(crate) fn ec2_tag(key: &str, value: impl Into<String>) -> aws_sdk_ec2::types::Tag {
    aws_sdk_ec2::types::Tag::builder().key(key).value(value).build()
}

/// EC2 tags of `tags`.
pub(crate) fn ec2_tags(tags: &Tags) -> Vec<aws_sdk_ec2::types::Tag> {
    tags.iter().map(|(k, v)| ec2_tag(k, v)).collect()
}

/// Sets the user's `tags` on the EC2 `resources` and removes the keys `removed` from them.
pub(crate) async fn retag_ec2(
    ec2: &aws_sdk_ec2::Client,
    resources: Vec<String>,
    tags: &Tags,
    removed: &[String],
) -> Result<(), CloudError> {
    use aws_sdk_ec2::types::Tag;
    if resources.is_empty() {
        return Ok(());
    }
    if !tags.is_empty() {
        ec2.create_tags()
            .set_resources(Some(resources.clone()))
            .set_tags(Some(ec2_tags(tags)))
            .send()
            .await
            .map_err(|e| api_error("ec2:CreateTags", e))?;
    }
    if !removed.is_empty() {
        ec2.delete_tags()
            .set_resources(Some(resources))
            .set_tags(Some(removed.iter().map(|k| Tag::builder().key(k).build()).collect()))
            .send()
            .await
            .map_err(|e| api_error("ec2:DeleteTags", e))?;
    }
    Ok(())
}

/// Turns an SDK error into a [`CloudError::Api`] that names the call, says what kind of
/// failure it was and what to do, and keeps the SDK's error as its source.
pub(crate) fn api_error<E>(
    operation: &str,
    error: aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> CloudError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
    let code = ProvideErrorMetadata::code(&error).unwrap_or("").to_owned();
    let status = error.raw_response().map(|r| r.status().as_u16());
    let transport = matches!(&error, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_));
    let kind = if transport {
        ApiErrorKind::Other
    } else {
        kind_of(&code, status)
    };
    let fix = match kind {
        _ if transport => {
            "check that the endpoint is reachable from this machine (provider endpoints {} and region) and try again"
                .to_owned()
        }
        ApiErrorKind::AccessDenied if credentials_refused(&code) => {
            "check the AWS credentials Terraform runs with (environment, profile or SSO session) and refresh them"
                .to_owned()
        }
        ApiErrorKind::AccessDenied => {
            format!("allow {operation} for the identity Terraform runs as (its IAM policy, or the key policy for KMS)")
        }
        ApiErrorKind::Throttled => "the service kept throttling after every retry; apply again in a minute".to_owned(),
        _ => "apply again; nothing half-made is kept, and what finished is found and reused".to_owned(),
    };
    let reason = match ProvideErrorMetadata::message(&error) {
        Some(message) if !code.is_empty() => format!("{code}: {message}"),
        _ => aws_smithy_types::error::display::DisplayErrorContext(&error).to_string(),
    };
    CloudError::Api {
        operation: operation.to_owned(),
        kind,
        reason,
        fix,
        source: Some(Box::new(error)),
    }
}

/// The tag every resource this backend creates carries, naming the record it belongs to.
pub const TAG_RECORD: &str = "safebox:record";
/// A resource's Safebox kind (`image`, `snapshot`, `box`, `sealed-key`).
pub const TAG_KIND: &str = "safebox:kind";

impl Cloud for AwsCloud {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn sharing(&self) -> Option<&dyn Sharing> {
        Some(self)
    }

    fn regions(&self) -> Option<&dyn Regions> {
        Some(self)
    }

    fn sealed_keys(&self) -> Option<&dyn SealedKeys> {
        Some(self)
    }

    fn kms_signers(&self) -> Option<&dyn KmsSigners> {
        Some(self)
    }

    fn tagging(&self) -> Option<&dyn Tagging> {
        Some(self)
    }
}

#[async_trait]
impl Tagging for AwsCloud {
    async fn retag(&self, target: Tagged<'_>, tags: &Tags, removed: &[String]) -> Result<(), CloudError> {
        match target {
            Tagged::Image(id) => images::retag(&self.ec2, id, tags, removed).await,
            Tagged::Box(id) => boxes::retag(&self.ec2, id, tags, removed).await,
            Tagged::SealedKey(key_id) => keys::retag(&self.kms, key_id, tags, removed).await,
        }
    }
}

#[async_trait]
impl Images for AwsCloud {
    fn artifact_kind(&self) -> ArtifactKind {
        ArtifactKind::MachineImage
    }

    async fn publish_image(&self, id: &str, build: &ImageBuild, tags: &Tags) -> Result<PublishedImage, CloudError> {
        let scratch = safebox::image::build::cache_dir(&self.state_dir);
        images::publish(&self.ec2, &self.ebs, &scratch, (id, tags), build).await
    }

    async fn check_image(&self, id: &str, expected: &ExpectedArtifacts) -> Result<Vec<String>, CloudError> {
        images::check(&self.ec2, id, expected).await
    }

    async fn delete_image(&self, id: &str) -> Result<(), CloudError> {
        images::delete(&self.ec2, id).await
    }
}

#[async_trait]
impl Boxes for AwsCloud {
    fn places_boxes(&self) -> bool {
        true
    }

    fn boots(&self, format: ImageFormat) -> bool {
        boxes::boots(format)
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
}

#[async_trait]
impl Sharing for AwsCloud {
    async fn share_image(&self, id: &str, account_ids: &[String]) -> Result<(), CloudError> {
        images::share(&self.ec2, id, account_ids).await
    }
}

#[async_trait]
impl Regions for AwsCloud {
    fn region(&self) -> &str {
        &self.region
    }

    async fn copy_image(&self, id: &str, region: &str, timeout: Duration) -> Result<PublishedImage, CloudError> {
        let there = self.regional(region).await;
        let route = images::CopyRoute {
            source: &self.ec2,
            source_region: &self.region,
            dest: &there.ec2,
            dest_region: region,
            deadline: std::time::Instant::now() + timeout,
        };
        images::copy(&route, id).await
    }

    async fn in_region(&self, region: &str) -> Result<Box<dyn Cloud>, CloudError> {
        Ok(Box::new(self.regional(region).await))
    }
}

#[async_trait]
impl SealedKeys for AwsCloud {
    async fn create_sealed_key(
        &self,
        id: &str,
        description: &str,
        policy: &str,
        tags: &Tags,
    ) -> Result<SealedKey, CloudError> {
        keys::create_sealed(&self.kms, id, description, policy, tags).await
    }

    async fn sealed_key_policy(&self, key_id: &str) -> Result<Option<String>, CloudError> {
        keys::sealed_policy(&self.kms, key_id).await
    }

    async fn delete_sealed_key(&self, key_id: &str) -> Result<(), CloudError> {
        keys::delete_sealed(&self.kms, key_id).await
    }
}

#[async_trait]
impl KmsSigners for AwsCloud {
    async fn kms_public_key(&self, key_id: &str) -> Result<PublicKey, CloudError> {
        keys::public_key(&self.kms, key_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_told_apart_by_kind() {
        for (code, status, kind) in [
            ("InvalidAMIID.NotFound", Some(400), ApiErrorKind::NotFound),
            ("InvalidSnapshot.NotFound", Some(400), ApiErrorKind::NotFound),
            ("NotFoundException", Some(400), ApiErrorKind::NotFound),
            ("", Some(404), ApiErrorKind::NotFound),
            ("InvalidSnapshot.InUse", Some(400), ApiErrorKind::Conflict),
            ("KMSInvalidStateException", Some(400), ApiErrorKind::Conflict),
            ("", Some(412), ApiErrorKind::Conflict),
            ("RequestLimitExceeded", Some(503), ApiErrorKind::Throttled),
            ("ThrottlingException", Some(400), ApiErrorKind::Throttled),
            ("", Some(429), ApiErrorKind::Throttled),
            ("UnauthorizedOperation", Some(403), ApiErrorKind::AccessDenied),
            ("AuthFailure", Some(401), ApiErrorKind::AccessDenied),
            ("AccessDeniedException", Some(400), ApiErrorKind::AccessDenied),
            ("InvalidParameterValue", Some(400), ApiErrorKind::Other),
            // A code that merely mentions a kind is not that kind.
            ("NotFoundButNotReally", Some(400), ApiErrorKind::Other),
            ("InternalError", Some(500), ApiErrorKind::Other),
        ] {
            assert_eq!(kind_of(code, status), kind, "{code} {status:?}");
        }
    }
}
