//! The store on S3: [`S3Objects`] gives the core's [`Objects`] over one bucket and prefix, and
//! [`S3Store`] is the core's bucket store over it (layout and rules in
//! [`safebox::store::objects`]).
//!
//! Conditional writes are S3's own: `PutObject` with `If-None-Match: *` creates an object only
//! if the key has none, and with `If-Match: <ETag>` replaces it only if it is still that
//! version; S3 answers `412 Precondition Failed` (or `409 ConditionalRequestConflict` while a
//! competing write is in flight) when the condition does not hold, and that is
//! [`CloudError::Precondition`]. Every `PutObject` carries a SHA-256 checksum: S3 refuses
//! writes without one into a bucket with a default Object Lock retention.
//!
//! Throttling (`503 SlowDown`), 5xx answers and dropped connections are retried by the SDK
//! ([`crate::sdk_config`]); a conditional write whose answer was lost and that is sent again
//! finds its own bytes and counts as done ([`safebox::store::objects::put_once`]).

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use safebox::cloud::CloudError;
use safebox::store::objects::{
    precondition, BucketProtection, Condition, Listed, Object, ObjectStore, Objects, Version,
};
use safebox::store::BucketLocation;

use crate::{api_error, sdk_config};

/// Where the store is and how to reach it.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The bucket and prefix.
    pub location: BucketLocation,
    /// The bucket's region.
    pub region: String,
    /// An endpoint override (a VPC endpoint, an emulator); requests then use path-style
    /// addressing (`https://endpoint/bucket/key`).
    pub endpoint: Option<String>,
}

/// The store in S3.
pub type S3Store = ObjectStore<S3Objects>;

/// Connects to the store `settings` describe. Nothing is called until the first operation.
pub async fn s3_store(settings: &S3Settings) -> S3Store {
    ObjectStore::new(S3Objects::connect(settings).await)
}

/// The endpoint for S3 from the environment, as the AWS SDKs and CLI read it:
/// `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`.
#[must_use]
pub fn endpoint_from_env() -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// One bucket and prefix of S3, as the core's [`Objects`].
#[derive(Debug, Clone)]
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    location: BucketLocation,
}

impl S3Objects {
    /// A client for `settings`.
    pub async fn connect(settings: &S3Settings) -> Self {
        let sdk = sdk_config(&settings.region).await;
        let mut config = aws_sdk_s3::config::Builder::from(&sdk);
        if let Some(url) = &settings.endpoint {
            config = config.endpoint_url(url).force_path_style(true);
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            location: settings.location.clone(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.location.prefix)
    }

    fn relative<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.location.prefix.as_str()).unwrap_or(key)
    }
}

/// Whether S3 refused a conditional request because its condition did not hold.
fn condition_failed<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    let status = error.raw_response().map(|r| r.status().as_u16());
    matches!(status, Some(412))
        || matches!(
            ProvideErrorMetadata::code(error),
            Some("PreconditionFailed" | "ConditionalRequestConflict")
        )
}

/// Whether the error says the key (or a version of it) does not exist.
fn missing<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    matches!(ProvideErrorMetadata::code(error), Some("NoSuchKey" | "NoSuchVersion"))
        || error.raw_response().is_some_and(|r| r.status().as_u16() == 404)
}

async fn collect(operation: &str, body: ByteStream) -> Result<Vec<u8>, CloudError> {
    body.collect().await.map(|b| b.into_bytes().to_vec()).map_err(|e| {
        CloudError::api(
            operation,
            format!("the answer's body was cut off ({e})"),
            "try again; nothing was changed",
        )
    })
}

#[async_trait]
impl Objects for S3Objects {
    fn location(&self) -> String {
        self.location.to_string()
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, CloudError> {
        let answer = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(self.key(key))
            .send()
            .await;
        match answer {
            Ok(output) => {
                let version = Version(output.e_tag().unwrap_or_default().to_owned());
                Ok(Some(Object {
                    body: collect("s3:GetObject", output.body).await?,
                    version,
                }))
            }
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(api_error("s3:GetObject", e)),
        }
    }

    async fn get_version(&self, key: &str, version_id: Option<&str>) -> Result<Vec<u8>, CloudError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(self.key(key))
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .map_err(|e| api_error("s3:GetObject", e))?;
        collect("s3:GetObject", output.body).await
    }

    async fn put(&self, key: &str, body: &[u8], condition: Condition<'_>) -> Result<Version, CloudError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(self.key(key))
            .content_type("application/json")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from(body.to_vec()));
        request = match condition {
            Condition::Any => request,
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(version) => request.if_match(&version.0),
        };
        match request.send().await {
            Ok(output) => Ok(Version(output.e_tag().unwrap_or_default().to_owned())),
            Err(e) if condition != Condition::Any && condition_failed(&e) => Err(precondition(self, key, condition)),
            Err(e) => Err(api_error("s3:PutObject", e)),
        }
    }

    async fn delete(&self, key: &str, version: Option<&Version>) -> Result<(), CloudError> {
        let answer = self
            .client
            .delete_object()
            .bucket(&self.location.bucket)
            .key(self.key(key))
            .set_if_match(version.map(|v| v.0.clone()))
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(e) if missing(&e) => Ok(()),
            Err(e) if version.is_some() && condition_failed(&e) => Err(precondition(
                self,
                key,
                version.map_or(Condition::Any, Condition::Matches),
            )),
            Err(e) => Err(api_error("s3:DeleteObject", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, CloudError> {
        let mut listed = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.location.bucket)
                .prefix(self.key(prefix))
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| api_error("s3:ListObjectVersions", e))?;
            for version in page.versions() {
                listed.push(Listed {
                    key: self.relative(version.key().unwrap_or_default()).to_owned(),
                    version_id: version.version_id().map(str::to_owned),
                    latest: version.is_latest().unwrap_or(false),
                    delete_marker: false,
                    size: u64::try_from(version.size().unwrap_or(0)).unwrap_or(0),
                });
            }
            for marker in page.delete_markers() {
                listed.push(Listed {
                    key: self.relative(marker.key().unwrap_or_default()).to_owned(),
                    version_id: marker.version_id().map(str::to_owned),
                    latest: marker.is_latest().unwrap_or(false),
                    delete_marker: true,
                    size: 0,
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    async fn protection(&self) -> Result<Option<BucketProtection>, CloudError> {
        let bucket = &self.location.bucket;
        let versioning = self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| api_error("s3:GetBucketVersioning", e))?;
        let mut protection = BucketProtection {
            bucket: bucket.clone(),
            versioning: versioning.status().map(|s| s.as_str().to_owned()),
            ..BucketProtection::default()
        };
        let lock = self.client.get_object_lock_configuration().bucket(bucket).send().await;
        let configuration = match lock {
            Ok(output) => output.object_lock_configuration,
            Err(e) if ProvideErrorMetadata::code(&e) == Some("ObjectLockConfigurationNotFoundError") => None,
            Err(e) => return Err(api_error("s3:GetObjectLockConfiguration", e)),
        };
        if let Some(configuration) = configuration {
            protection.object_lock = configuration.object_lock_enabled().map(|e| e.as_str()) == Some("Enabled");
            if let Some(retention) = configuration.rule().and_then(|r| r.default_retention()) {
                protection.mode = retention.mode().map(|m| m.as_str().to_owned());
                protection.days = retention.days().map(i64::from);
                protection.years = retention.years().map(i64::from);
            }
        }
        Ok(Some(protection))
    }
}
