//! KMS: signer keys for governance and sealed keys for attested enclaves.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag};
use safebox::cloud::{ApiErrorKind, CloudError, SealedKey, Tags};
use safebox::govern::keys::{KeyAlgorithm, PublicKey};

use crate::{api_error, TAG_KIND, TAG_RECORD};

/// Days a deleted sealed key stays recoverable (the shortest KMS allows).
pub const DELETION_WINDOW_DAYS: i32 = 7;

/// The public half of the asymmetric signing key `key_id`.
///
/// # Errors
/// [`CloudError::Api`] when KMS refuses, or when the key is not an ECC signing key Safebox
/// accepts (P-256 or P-384).
pub async fn public_key(kms: &aws_sdk_kms::Client, key_id: &str) -> Result<PublicKey, CloudError> {
    let out = kms
        .get_public_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| api_error("kms:GetPublicKey", e))?;
    let unusable = |reason: String| {
        CloudError::api(
            "kms:GetPublicKey",
            reason,
            "use an asymmetric KMS key with KeySpec ECC_NIST_P256 or ECC_NIST_P384 and KeyUsage SIGN_VERIFY",
        )
    };
    if out.key_usage() != Some(&KeyUsageType::SignVerify) {
        return Err(unusable(format!("the key {key_id} is not a signing key")));
    }
    let der = out
        .public_key()
        .ok_or_else(|| unusable(format!("the key {key_id} has no public key")))?;
    PublicKey::from_spki_der(der.as_ref()).map_err(|e| unusable(format!("the key {key_id}: {e}")))
}

/// Signs `message` with the KMS key `key_id` the way Safebox approvals are signed (ECDSA over
/// the message's SHA-256 for P-256 keys, SHA-384 for P-384 keys; DER signature); returns the
/// signature and the key's public half.
///
/// # Errors
/// [`CloudError::Api`] when KMS refuses or the key cannot sign Safebox approvals.
pub async fn sign(kms: &aws_sdk_kms::Client, key_id: &str, message: &[u8]) -> Result<(Vec<u8>, PublicKey), CloudError> {
    let public = public_key(kms, key_id).await?;
    let algorithm = match public.algorithm() {
        KeyAlgorithm::EcdsaP256 => SigningAlgorithmSpec::EcdsaSha256,
        KeyAlgorithm::EcdsaP384 => SigningAlgorithmSpec::EcdsaSha384,
        KeyAlgorithm::Ed25519 => {
            return Err(CloudError::api(
                "kms:Sign",
                format!("the key {key_id} is not an ECDSA key"),
                "use a KMS key with KeySpec ECC_NIST_P256 or ECC_NIST_P384",
            ))
        }
    };
    let out = kms
        .sign()
        .key_id(key_id)
        .message(Blob::new(message.to_vec()))
        .message_type(MessageType::Raw)
        .signing_algorithm(algorithm)
        .send()
        .await
        .map_err(|e| api_error("kms:Sign", e))?;
    let signature = out.signature().map(|b| b.as_ref().to_vec()).unwrap_or_default();
    Ok((signature, public))
}

/// Creates the sealed key of record `id` with `policy`.
///
/// The policy deliberately grants nobody `kms:PutKeyPolicy`, so KMS's lockout check is
/// bypassed: locking the policy is the point.
pub async fn create_sealed(
    kms: &aws_sdk_kms::Client,
    id: &str,
    description: &str,
    policy: &str,
    tags: &Tags,
) -> Result<SealedKey, CloudError> {
    let ours = [(TAG_RECORD, id), (TAG_KIND, "sealed-key")];
    let all_tags = ours
        .into_iter()
        .chain(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map(|(k, v)| Tag::builder().tag_key(k).tag_value(v).build().map_err(build_error))
        .collect::<Result<Vec<_>, _>>()?;
    let out = kms
        .create_key()
        .description(description)
        .key_spec(KeySpec::SymmetricDefault)
        .key_usage(KeyUsageType::EncryptDecrypt)
        .policy(policy)
        .bypass_policy_lockout_safety_check(true)
        .set_tags(Some(all_tags))
        .send()
        .await
        .map_err(|e| api_error("kms:CreateKey", e))?;
    let metadata = out
        .key_metadata()
        .ok_or_else(|| CloudError::api("kms:CreateKey", "the answer holds no key", "apply again"))?;
    Ok(SealedKey {
        key_id: metadata.key_id().to_owned(),
        key_arn: metadata.arn().unwrap_or_default().to_owned(),
    })
}

/// Sets the user's `tags` on the key `key_id` and removes the keys `removed` from it.
pub async fn retag(kms: &aws_sdk_kms::Client, key_id: &str, tags: &Tags, removed: &[String]) -> Result<(), CloudError> {
    if !tags.is_empty() {
        let tags = tags
            .iter()
            .map(|(k, v)| Tag::builder().tag_key(k).tag_value(v).build().map_err(build_error))
            .collect::<Result<Vec<_>, _>>()?;
        kms.tag_resource()
            .key_id(key_id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| api_error("kms:TagResource", e))?;
    }
    if !removed.is_empty() {
        kms.untag_resource()
            .key_id(key_id)
            .set_tag_keys(Some(removed.to_vec()))
            .send()
            .await
            .map_err(|e| api_error("kms:UntagResource", e))?;
    }
    Ok(())
}

fn build_error(e: aws_sdk_kms::error::BuildError) -> CloudError {
    CloudError::api("kms", e.to_string(), "report this as a bug")
}

/// The policy of `key_id`, or `None` when the key is gone or scheduled for deletion.
pub async fn sealed_policy(kms: &aws_sdk_kms::Client, key_id: &str) -> Result<Option<String>, CloudError> {
    let described = match kms.describe_key().key_id(key_id).send().await {
        Ok(described) => described,
        Err(e) => {
            let e = api_error("kms:DescribeKey", e);
            return if e.api_kind() == Some(ApiErrorKind::NotFound) {
                Ok(None)
            } else {
                Err(e)
            };
        }
    };
    let state = described.key_metadata().and_then(|m| m.key_state());
    if matches!(state, Some(KeyState::PendingDeletion) | None) {
        return Ok(None);
    }
    let policy = kms
        .get_key_policy()
        .key_id(key_id)
        .policy_name("default")
        .send()
        .await
        .map_err(|e| api_error("kms:GetKeyPolicy", e))?;
    Ok(policy.policy().map(str::to_owned))
}

/// Schedules `key_id` for deletion after [`DELETION_WINDOW_DAYS`].
pub async fn delete_sealed(kms: &aws_sdk_kms::Client, key_id: &str) -> Result<(), CloudError> {
    if sealed_policy(kms, key_id).await?.is_none() {
        return Ok(());
    }
    kms.schedule_key_deletion()
        .key_id(key_id)
        .pending_window_in_days(DELETION_WINDOW_DAYS)
        .send()
        .await
        .map_err(|e| api_error("kms:ScheduleKeyDeletion", e))?;
    Ok(())
}
