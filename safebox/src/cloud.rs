//! The seam between Safebox and where things run.
//!
//! Every backend (`local` here, `aws` in its own crate) implements [`Cloud`]: [`Images`] and
//! [`Boxes`], which all backends have, and capabilities ([`Sharing`], [`Regions`],
//! [`SealedKeys`], [`KmsSigners`], [`SimulatedAttestation`]) that a backend offers or not.
//! Records and the audit log are not here: they live in a [`crate::store::Store`], which a
//! team may share while each member's backend runs its own boxes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::attest::chain::TrustRoot;
use crate::govern::audit::AppendError;
use crate::govern::keys::PublicKey;
use crate::image::build::ImageBuild;
use crate::image::spec::ImageFormat;

/// The kinds of record a backend stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A `safebox_policy`.
    Policy,
    /// A `safebox_image`.
    Image,
    /// A `safebox_enclave`.
    Enclave,
    /// A `safebox_attested_link`.
    Link,
    /// A `safebox_sealed_key`.
    SealedKey,
}

impl RecordKind {
    /// The kind's folder or prefix name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policies",
            Self::Image => "images",
            Self::Enclave => "enclaves",
            Self::Link => "links",
            Self::SealedKey => "sealed-keys",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a backend operation failed. Messages name the file or object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("writing", "locking", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An id that cannot name a record (it came from an import, say).
    #[error("{id:?} is not a valid {kind} id: ids are 1 to 128 characters of letters, digits, '.', '_' and '-', not starting with '.'")]
    InvalidId {
        /// The kind looked up.
        kind: RecordKind,
        /// The id given.
        id: String,
    },
    /// Published bytes do not hash to what was planned.
    #[error("the published {artifact} hashes to {actual}, not the planned {expected}; an input changed between plan and apply, or the disk is failing: plan again")]
    Digest {
        /// The artifact.
        artifact: String,
        /// The planned digest.
        expected: String,
        /// What was written.
        actual: String,
    },
    /// A box did not start.
    #[error("the box {id} did not start: {reason}")]
    Launch {
        /// The box.
        id: String,
        /// Why.
        reason: String,
    },
    /// An image could not be copied to another region.
    #[error("cannot copy the image {id} to {region}: {reason}")]
    Copy {
        /// The image.
        id: String,
        /// The destination region.
        region: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A cloud API call failed (after the SDK's retries).
    #[error("{operation} failed: {reason}; {fix}")]
    Api {
        /// The API operation, e.g. `ec2:RunInstances`.
        operation: String,
        /// What kind of failure it was, so that callers decide without reading messages.
        kind: ApiErrorKind,
        /// What the service or the transport said.
        reason: String,
        /// What to do about it.
        fix: String,
        /// The SDK's error, when there was one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The audit log could not be extended: it is broken, was rolled back, or I/O failed.
    #[error("cannot append to the audit log {location}: {source}")]
    Audit {
        /// Where the log is.
        location: String,
        /// Why.
        source: AppendError,
    },
    /// A conditional write found the object other than it expected; nothing was written.
    #[error("{key} in {location} {found}; nothing was overwritten")]
    Precondition {
        /// Where the store is.
        location: String,
        /// The object's key.
        key: String,
        /// What was found: `exists already`, or `changed since it was read`.
        found: &'static str,
    },
    /// Another run created or changed a record first; nothing was overwritten.
    #[error("the record {kind}/{id} in {location} was {how} by another run since this run read it; nothing was overwritten. Run terraform plan again (its refresh reads the record as it is now) and apply that plan")]
    RecordChanged {
        /// The record's kind.
        kind: RecordKind,
        /// Its id.
        id: String,
        /// Where the store is.
        location: String,
        /// `created` or `changed`.
        how: &'static str,
    },
    /// The objects of a bucket's audit log are not one whole log.
    #[error("the audit log in {location} is not whole: {source}")]
    AuditObjects {
        /// Where the store is.
        location: String,
        /// Which entry is at fault.
        source: crate::store::objects::AuditObjectsError,
    },
    /// The store's bucket does not keep what is written write-once.
    #[error("the bucket of {location} does not keep the audit log write-once: {source}")]
    Unprotected {
        /// Where the store is.
        location: String,
        /// The setting that falls short, and its fix.
        source: crate::store::objects::ProtectionError,
    },
    /// An object of the store is not what Safebox writes there.
    #[error("{key} in {location} is damaged: {reason}")]
    Damaged {
        /// Where the store is.
        location: String,
        /// The object.
        key: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A value that cannot name an object or a file (a signer id, a change digest).
    #[error("{what} {value:?} cannot name an object in a store: it must be {rule}")]
    InvalidKey {
        /// What it is.
        what: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        rule: &'static str,
    },
    /// The backend cannot do this.
    #[error("the {backend} backend cannot {what}; {fix}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked.
        what: String,
        /// What to do instead.
        fix: &'static str,
    },
}

/// What kind of failure a cloud API call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// What was asked for does not exist (any more).
    NotFound,
    /// The service kept throttling after every retry.
    Throttled,
    /// The caller's identity may not do this, or its credentials were refused.
    AccessDenied,
    /// The thing is in a state that forbids this now (in use, changed concurrently).
    Conflict,
    /// Anything else: transport failures, service faults, answers that make no sense.
    Other,
}

impl CloudError {
    /// A [`CloudError::Api`] of kind [`ApiErrorKind::Other`] that no SDK error caused (an
    /// answer that makes no sense, a key of the wrong type).
    #[must_use]
    pub fn api(operation: &str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Api {
            operation: operation.to_owned(),
            kind: ApiErrorKind::Other,
            reason: reason.into(),
            fix: fix.into(),
            source: None,
        }
    }

    /// The kind of a failed API call; `None` for other errors.
    #[must_use]
    pub fn api_kind(&self) -> Option<ApiErrorKind> {
        match self {
            Self::Api { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Where a published image's two artifacts are (local paths, or image ids in a cloud).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedImage {
    /// The development image.
    pub dev_artifact: String,
    /// The production image.
    pub prod_artifact: String,
    /// Cloud backends that upload disk snapshots: the LINEAR aggregate SHA-256 (hex) of the
    /// development and production snapshots, as sent with `CompleteSnapshot`.
    pub snapshot_linear_sha256: Option<(String, String)>,
}

/// The digests a published image's artifacts must still have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedArtifacts {
    /// SHA-256 of the development image (the EIF, or the UKI).
    pub dev_sha256: String,
    /// SHA-256 of the production image.
    pub prod_sha256: String,
    /// For a UKI build: SHA-256 of the development and production bootable disks.
    pub disk_sha256: Option<(String, String)>,
    /// SHA-256 of the manifest.
    pub manifest_sha256: String,
    /// SHA-256 of the seal proof.
    pub seal_proof_sha256: String,
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxSpec {
    /// The image artifact to boot (a local EIF or disk image path, or a cloud image id).
    pub artifact: String,
    /// What the artifact is: an EIF runs as a Nitro Enclave, a `"uki"` image's disk boots a
    /// machine with a TPM (see [`Boxes::boots`]).
    pub format: ImageFormat,
    /// Whether the box serves SSH (the development variant of an image with `dev_access`):
    /// a booted disk's box then has an [`BoxInstance::ssh_endpoint`].
    pub ssh: bool,
    /// vCPUs for the enclave.
    pub cpu_count: u32,
    /// Memory for the enclave.
    pub memory_mib: u32,
    /// Where in a cloud the box runs; the local backend has no use for it.
    pub placement: Placement,
    /// How long the box may take to start (`timeouts.create`).
    pub start_timeout: std::time::Duration,
    /// The public half of the box's key (64 hex digits): the agent accepts management
    /// requests signed with its private half only ([`crate::box_key`]).
    pub box_key: String,
}

/// Cloud placement of a box (all optional; the backend's defaults apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The instance type.
    pub instance_type: Option<String>,
    /// The subnet.
    pub subnet_id: Option<String>,
    /// Security groups.
    pub security_group_ids: Vec<String>,
    /// The instance profile (name or ARN).
    pub iam_instance_profile: Option<String>,
    /// Where the box's agent answers, when not at the backend's default address.
    pub attestation_endpoint: Option<String>,
    /// The user's tags for the box's cloud objects, set as they are created.
    pub tags: Tags,
}

/// The user's tags (key to value) for the cloud objects a resource creates, beside the
/// backend's own (`safebox:` keys, which the user's may not use).
pub type Tags = BTreeMap<String, String>;

/// Cloud objects that carry the user's [`Tags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tagged<'a> {
    /// The AMIs of image record `id` in this region (copies are tagged in theirs, through
    /// [`Regions::in_region`]).
    Image(&'a str),
    /// The instance of box record `id` and its volumes.
    Box(&'a str),
    /// The KMS key `key_id`.
    SealedKey(&'a str),
}

/// Tags on cloud objects, changed in place.
#[async_trait]
pub trait Tagging: Send + Sync {
    /// Sets `tags` on the cloud objects of `target` and removes the keys `removed` from them.
    async fn retag(&self, target: Tagged<'_>, tags: &Tags, removed: &[String]) -> Result<(), CloudError>;
}

/// A KMS key whose policy releases it only to attested enclaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// The key's id.
    pub key_id: String,
    /// The key's ARN.
    pub key_arn: String,
}

/// A running box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxInstance {
    /// The backend's id for it (an EC2 instance id, or `local-<id>`).
    pub instance_id: String,
    /// Where its agent answers (`http://HOST:PORT`).
    pub endpoint: String,
    /// Where its sshd answers (`HOST:PORT`): a booted disk's box of a variant with SSH
    /// ([`BoxSpec::ssh`]); `None` for every other box.
    pub ssh_endpoint: Option<String>,
}

/// What a backend publishes an image's variants as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// Files on this machine, named by their paths.
    File,
    /// Machine images in a cloud (AMIs), named by their ids.
    MachineImage,
}

/// Publishing and checking images: every backend can.
#[async_trait]
pub trait Images: Send + Sync {
    /// What [`PublishedImage`]'s artifacts are.
    fn artifact_kind(&self) -> ArtifactKind;

    /// Publishes both images of `build` under `id`, all or nothing, with the user's `tags`
    /// where the backend tags what it creates.
    async fn publish_image(&self, id: &str, build: &ImageBuild, tags: &Tags) -> Result<PublishedImage, CloudError>;

    /// Re-hashes the artifacts of image `id`; returns one sentence per artifact that is
    /// missing or changed (none when all are intact).
    async fn check_image(&self, id: &str, expected: &ExpectedArtifacts) -> Result<Vec<String>, CloudError>;

    /// Removes the artifacts of image `id`; removing a missing image is not an error.
    async fn delete_image(&self, id: &str) -> Result<(), CloudError>;
}

/// Running boxes: every backend can.
#[async_trait]
pub trait Boxes: Send + Sync {
    /// Whether [`BoxSpec::placement`] means anything here (instance types, subnets, ...).
    fn places_boxes(&self) -> bool;

    /// Whether this backend can run a box of an image of `format`.
    fn boots(&self, format: ImageFormat) -> bool;

    /// Boots a box `id` whose agent then answers on the returned endpoint.
    async fn launch_box(&self, id: &str, spec: &BoxSpec) -> Result<BoxInstance, CloudError>;

    /// The box `id` if it is still running.
    async fn find_box(&self, id: &str) -> Result<Option<BoxInstance>, CloudError>;

    /// Stops box `id` and removes what it left; stopping a stopped box is not an error.
    async fn terminate_box(&self, id: &str) -> Result<(), CloudError>;
}

/// Letting other accounts launch published images.
#[async_trait]
pub trait Sharing: Send + Sync {
    /// Lets exactly the accounts `account_ids` launch image `id` (adding and removing
    /// permissions as needed); an empty list makes it private again.
    async fn share_image(&self, id: &str, account_ids: &[String]) -> Result<(), CloudError>;
}

/// Working in more than one region.
#[async_trait]
pub trait Regions: Send + Sync {
    /// The region this backend works in.
    fn region(&self) -> &str;

    /// Copies the published image `id` into `region`, where [`Regions::in_region`] then checks,
    /// shares and deletes it like an original; finds the copy an earlier attempt made instead
    /// of copying twice, and returns once the copies are usable. A copy still not usable after
    /// `timeout` is deleted and the call fails ([`CloudError::Copy`]).
    async fn copy_image(&self, id: &str, region: &str, timeout: Duration) -> Result<PublishedImage, CloudError>;

    /// The same backend working in `region`.
    async fn in_region(&self, region: &str) -> Result<Box<dyn Cloud>, CloudError>;
}

/// Keys that a key service releases only to attested boxes.
#[async_trait]
pub trait SealedKeys: Send + Sync {
    /// Creates a KMS key `id` with the key policy `policy` (JSON), which nobody can change
    /// afterwards (the policy grants no `kms:PutKeyPolicy`), carrying the user's `tags` from its
    /// creation.
    async fn create_sealed_key(
        &self,
        id: &str,
        description: &str,
        policy: &str,
        tags: &Tags,
    ) -> Result<SealedKey, CloudError>;

    /// The key policy of the sealed key `key_id`; `None` when the key is gone or pending deletion.
    async fn sealed_key_policy(&self, key_id: &str) -> Result<Option<String>, CloudError>;

    /// Schedules the sealed key `key_id` for deletion; a key already gone is not an error.
    async fn delete_sealed_key(&self, key_id: &str) -> Result<(), CloudError>;
}

/// Policy signers whose private half a key service holds.
#[async_trait]
pub trait KmsSigners: Send + Sync {
    /// The public half of a KMS key, for policy signers given by `kms_key_id`.
    async fn kms_public_key(&self, key_id: &str) -> Result<PublicKey, CloudError>;
}

/// Boxes attested by a software root generated on this machine rather than by hardware.
pub trait SimulatedAttestation: Send + Sync {
    /// The root that signs the simulated documents (created on first use).
    ///
    /// # Errors
    /// [`CloudError::Io`] or [`CloudError::Launch`] when the root cannot be read or made.
    fn trust_root(&self) -> Result<TrustRoot, CloudError>;
}

/// A place where Safebox publishes images and runs boxes.
///
/// Every backend publishes images and runs boxes; what only some can do is a capability it
/// returns (`None` when it cannot), so that callers ask what a backend does, never which one
/// it is.
pub trait Cloud: Images + Boxes {
    /// The backend's name as written in provider configuration, for messages.
    fn name(&self) -> &'static str;

    /// Sharing images with other accounts.
    fn sharing(&self) -> Option<&dyn Sharing> {
        None
    }

    /// Regions and copies between them.
    fn regions(&self) -> Option<&dyn Regions> {
        None
    }

    /// Sealed keys.
    fn sealed_keys(&self) -> Option<&dyn SealedKeys> {
        None
    }

    /// Policy signers held in a key service.
    fn kms_signers(&self) -> Option<&dyn KmsSigners> {
        None
    }

    /// The software root, when this backend's boxes are simulated.
    fn simulated(&self) -> Option<&dyn SimulatedAttestation> {
        None
    }

    /// Changing the user's tags on cloud objects (a backend without it creates none).
    fn tagging(&self) -> Option<&dyn Tagging> {
        None
    }
}

/// Checks that `id` can name a record anywhere (a file name, an object key).
///
/// # Errors
/// [`CloudError::InvalidId`] for anything else, including path traversal attempts.
pub fn check_record_id(kind: RecordKind, id: &str) -> Result<(), CloudError> {
    if is_plain_name(id, b"") {
        Ok(())
    } else {
        Err(CloudError::InvalidId {
            kind,
            id: id.to_owned(),
        })
    }
}

/// Whether `name` is 1 to 128 ASCII letters, digits, `.`, `_`, `-` and the bytes of `extra`,
/// not starting with `.`: a name that is the same file or object everywhere and escapes no
/// folder.
pub(crate) fn is_plain_name(name: &str, extra: &[u8]) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || extra.contains(&b))
}

/// A fresh random record id: `prefix-` and 16 hex digits.
#[must_use]
pub fn new_record_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_escape_their_folder() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\0b", &"x".repeat(129)] {
            assert!(check_record_id(RecordKind::Policy, bad).is_err(), "{bad:?}");
        }
        check_record_id(RecordKind::Policy, &new_record_id("pol")).unwrap();
    }
}
