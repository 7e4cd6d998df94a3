//! Uploading a disk file as an EBS snapshot with the EBS direct APIs.
//!
//! `StartSnapshot`, then one `PutSnapshotBlock` per 512 KiB block that is not all zeros (EBS
//! reads blocks never written as zeros), each with the block's SHA-256 (base64) so EBS checks
//! what arrived, at most [`PARALLEL_UPLOADS`] in flight; then `CompleteSnapshot` with the
//! number of blocks and their LINEAR aggregate checksum: SHA-256 over the blocks' SHA-256
//! digests (32 bytes each) concatenated in ascending block order.
//!
//! Only the byte ranges the disk writer says may hold data are read; everything else is known
//! to be zero. A failed upload deletes its snapshot: nothing half-made is left.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use base64::Engine as _;
use safebox::cloud::CloudError;
use safebox::image::disk::{PayloadDisk, BLOCK_SIZE};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::api_error;

/// Blocks uploaded concurrently.
pub const PARALLEL_UPLOADS: usize = 16;
/// How long EBS keeps a started snapshot pending before it gives up on it (minutes): an
/// upload interrupted for good ends as an `error` snapshot, which the next publish deletes.
const SNAPSHOT_TIMEOUT_MINUTES: i32 = 60;
const GIB: u64 = 1 << 30;

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The snapshot.
    pub snapshot_id: String,
    /// The LINEAR aggregate SHA-256 sent with `CompleteSnapshot`, hex.
    pub linear_sha256: String,
    /// Blocks written.
    pub blocks: usize,
}

/// What to call the snapshot and how to recognise it later.
#[derive(Debug, Clone)]
pub struct SnapshotRequest<'a> {
    /// The description.
    pub description: &'a str,
    /// Tags (key, value).
    pub tags: &'a [(String, String)],
    /// Idempotency token: a retried `StartSnapshot` with the same token returns the same snapshot.
    pub client_token: &'a str,
}

/// Uploads `path` (laid out as `disk` says) as a new snapshot.
///
/// # Errors
/// [`CloudError::Api`] naming the call that failed (the snapshot is deleted first), or
/// [`CloudError::Io`] when the file cannot be read.
pub async fn upload_snapshot(
    ebs: &aws_sdk_ebs::Client,
    ec2: &aws_sdk_ec2::Client,
    path: &Path,
    disk: &PayloadDisk,
    request: &SnapshotRequest<'_>,
) -> Result<Uploaded, CloudError> {
    let started = ebs
        .start_snapshot()
        .volume_size(i64::try_from(disk.size.div_ceil(GIB)).unwrap_or(i64::MAX))
        .description(request.description)
        .client_token(request.client_token)
        .timeout(SNAPSHOT_TIMEOUT_MINUTES)
        .set_tags(Some(
            request
                .tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .send()
        .await
        .map_err(|e| api_error("ebs:StartSnapshot", e))?;
    let snapshot_id = started.snapshot_id().unwrap_or_default().to_owned();
    match put_blocks(ebs, &snapshot_id, path, disk).await {
        Ok(uploaded) => Ok(uploaded),
        Err(e) => {
            let _ = ec2.delete_snapshot().snapshot_id(&snapshot_id).send().await;
            Err(e)
        }
    }
}

async fn put_blocks(
    ebs: &aws_sdk_ebs::Client,
    snapshot_id: &str,
    path: &Path,
    disk: &PayloadDisk,
) -> Result<Uploaded, CloudError> {
    let file = Arc::new(File::open(path).map_err(|source| CloudError::Io {
        action: "opening",
        path: path.to_path_buf(),
        source,
    })?);
    let mut digests: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    let mut in_flight: JoinSet<BlockResult> = JoinSet::new();
    let indexes = disk
        .data_extents
        .iter()
        .flat_map(|extent| (extent.start / BLOCK_SIZE)..extent.end.div_ceil(BLOCK_SIZE));
    for index in indexes {
        if in_flight.len() >= PARALLEL_UPLOADS {
            if let Some(done) = in_flight.join_next().await {
                record(done, &mut digests)?;
            }
        }
        let (file, ebs, snapshot_id, path) = (
            Arc::clone(&file),
            ebs.clone(),
            snapshot_id.to_owned(),
            path.to_path_buf(),
        );
        in_flight.spawn(async move {
            let read = tokio::task::spawn_blocking(move || {
                let mut block = vec![0u8; usize::try_from(BLOCK_SIZE).unwrap_or(usize::MAX)];
                file.read_exact_at(&mut block, index * BLOCK_SIZE).map(|()| block)
            });
            let block = read
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r)
                .map_err(|source| CloudError::Io {
                    action: "reading",
                    path,
                    source,
                })?;
            if block.iter().all(|b| *b == 0) {
                return Ok((index, None));
            }
            let digest: [u8; 32] = Sha256::digest(&block).into();
            ebs.put_snapshot_block()
                .snapshot_id(&snapshot_id)
                .block_index(i32::try_from(index).unwrap_or(i32::MAX))
                .data_length(i32::try_from(BLOCK_SIZE).unwrap_or(i32::MAX))
                .checksum(base64::engine::general_purpose::STANDARD.encode(digest))
                .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .block_data(ByteStream::from(block))
                .send()
                .await
                .map_err(|e| api_error("ebs:PutSnapshotBlock", e))?;
            Ok((index, Some(digest)))
        });
    }
    while let Some(done) = in_flight.join_next().await {
        record(done, &mut digests)?;
    }
    let linear = linear_checksum(digests.values());
    ebs.complete_snapshot()
        .snapshot_id(snapshot_id)
        .changed_blocks_count(i32::try_from(digests.len()).unwrap_or(i32::MAX))
        .checksum(base64::engine::general_purpose::STANDARD.encode(linear))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(|e| api_error("ebs:CompleteSnapshot", e))?;
    Ok(Uploaded {
        snapshot_id: snapshot_id.to_owned(),
        linear_sha256: hex::encode(linear),
        blocks: digests.len(),
    })
}

/// What one block's worker returns: its index and, unless it was all zeros, its SHA-256.
type BlockResult = Result<(u64, Option<[u8; 32]>), CloudError>;

fn record(
    done: Result<BlockResult, tokio::task::JoinError>,
    digests: &mut BTreeMap<u64, [u8; 32]>,
) -> Result<(), CloudError> {
    let (index, digest) = done.map_err(|e| {
        CloudError::api(
            "ebs:PutSnapshotBlock",
            format!("an upload worker stopped: {e}"),
            "apply again",
        )
    })??;
    if let Some(digest) = digest {
        digests.insert(index, digest);
    }
    Ok(())
}

/// The LINEAR aggregate: SHA-256 over the block digests in ascending block order.
#[must_use]
pub fn linear_checksum<'a>(digests_in_block_order: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for digest in digests_in_block_order {
        hasher.update(digest);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linear_checksum_is_order_sensitive_and_covers_every_block() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let ab = linear_checksum([&a, &b]);
        let mut concatenated = a.to_vec();
        concatenated.extend_from_slice(&b);
        assert_eq!(ab, <[u8; 32]>::from(Sha256::digest(&concatenated)));
        assert_ne!(ab, linear_checksum([&b, &a]));
        assert_ne!(ab, linear_checksum([&a]));
    }
}
