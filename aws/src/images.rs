//! Images as AMIs.
//!
//! Per variant: the payload disk (the variant's EIF, the manifest and the seal proof on a
//! deterministic GPT/FAT32 disk) becomes an EBS snapshot, and the snapshot an AMI that boots
//! with UEFI, has a TPM 2.0, requires IMDSv2 and uses ENA.
//!
//! Everything is found again by tags, never by remembering ids between attempts:
//! - a snapshot carries `safebox:payload` (digest of everything its bytes derive from) and, once
//!   its upload completed, `safebox:uploaded` (its LINEAR checksum). A publish reuses a finished
//!   snapshot with its payload and deletes unfinished ones (left by an interrupted apply);
//! - an AMI carries `safebox:record` (the image record it belongs to), the variant, the
//!   manifest and image digests, the PCRs and its snapshot. A publish reuses an AMI of the same
//!   content (its name is derived from the content, so there can be only one) and claims it.

use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, ImageAttributeName, ImageState,
    ImdsSupportValues, LaunchPermission, LaunchPermissionModifications, Tag, TpmSupportValues, VolumeType,
};
use safebox::cloud::{check_record_id, ApiErrorKind, CloudError, ExpectedArtifacts, PublishedImage, RecordKind, Tags};
use safebox::image::build::ImageBuild;
use safebox::image::disk::{write_payload_disk, PayloadFile};
use safebox::image::spec::ImageFormat;
use safebox::image::Variant;
use sha2::{Digest, Sha256};

use crate::upload::{upload_snapshot, SnapshotRequest};
use crate::{api_error, TAG_KIND, TAG_RECORD};

/// The payload disk format; part of every payload digest, so a new format never reuses an old
/// snapshot.
const PAYLOAD_FORMAT: &str = "safebox-payload-disk-v1";
/// Format tag of a UKI build's bootable disk in the content digest.
const UKI_DISK_FORMAT: &str = "safebox-uki-disk-v1";
/// The tag carrying a UKI build's disk digest.
const TAG_DISK_SHA256: &str = "safebox:disk-sha256";
/// The tag naming an image's format (`eif` or `uki`).
const TAG_FORMAT: &str = "safebox:format";
const TAG_PAYLOAD: &str = "safebox:payload";
const TAG_UPLOADED: &str = "safebox:uploaded";
const TAG_VARIANT: &str = "safebox:variant";
const TAG_MANIFEST: &str = "safebox:manifest-sha256";
const TAG_IMAGE_SHA256: &str = "safebox:image-sha256";
const TAG_SEAL_PROOF: &str = "safebox:seal-proof-sha256";
const TAG_SNAPSHOT: &str = "safebox:snapshot";
const ROOT_DEVICE: &str = "/dev/xvda";
const MANIFEST_FILE: &str = "manifest.json";
const SEAL_PROOF_FILE: &str = "seal-proof.json";

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tag_filter(key: &str, value: &str) -> Filter {
    filter(&format!("tag:{key}"), value)
}

use crate::ec2_tag as tag;

fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(Tag::value)
}

/// What a variant's disk holds, digested: equal digests mean equal disk bytes. For an EIF
/// build, the payload disk of its EIF, manifest and seal proof; for a UKI build, the bootable
/// disk, whose own SHA-256 is planned.
fn payload_digest(build: &ImageBuild, variant: Variant) -> String {
    let m = build.measurements(variant);
    let (manifest, seal_proof) = (build.manifest_sha256(), build.seal_proof_sha256());
    let mut hasher = Sha256::new();
    let parts: Vec<&str> = match &m.disk_sha256 {
        Some(disk) => vec![UKI_DISK_FORMAT, variant.as_str(), disk],
        None => vec![
            PAYLOAD_FORMAT,
            variant.as_str(),
            &m.image_sha256,
            &manifest,
            &seal_proof,
        ],
    };
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// One published variant.
struct PublishedVariant {
    ami_id: String,
    linear_sha256: String,
}

/// Publishes both variants of `build` as AMIs belonging to record `id`.
pub async fn publish(
    ec2: &aws_sdk_ec2::Client,
    ebs: &aws_sdk_ebs::Client,
    cache_dir: &Path,
    (id, tags): (&str, &Tags),
    build: &ImageBuild,
) -> Result<PublishedImage, CloudError> {
    check_record_id(RecordKind::Image, id)?;
    let published = async {
        let dev = publish_variant(ec2, ebs, cache_dir, (id, tags), build, Variant::Dev).await?;
        let prod = publish_variant(ec2, ebs, cache_dir, (id, tags), build, Variant::Prod).await?;
        Ok(PublishedImage {
            dev_artifact: dev.ami_id,
            prod_artifact: prod.ami_id,
            snapshot_linear_sha256: Some((dev.linear_sha256, prod.linear_sha256)),
        })
    }
    .await;
    if published.is_err() {
        // All or nothing: the variant that did publish goes too.
        let _ = delete(ec2, id).await;
    }
    published
}

async fn publish_variant(
    ec2: &aws_sdk_ec2::Client,
    ebs: &aws_sdk_ebs::Client,
    cache_dir: &Path,
    (id, tags): (&str, &Tags),
    build: &ImageBuild,
    variant: Variant,
) -> Result<PublishedVariant, CloudError> {
    let payload = payload_digest(build, variant);
    let (snapshot_id, linear_sha256, created) = match finished_snapshot(ec2, &payload).await? {
        Some(found) => (found.0, found.1, false),
        None => {
            let uploaded = upload_payload(ec2, ebs, cache_dir, id, build, variant, &payload).await?;
            (uploaded.snapshot_id, uploaded.linear_sha256, true)
        }
    };
    let registered = async {
        let ami_id = register(ec2, (id, tags), build, variant, &snapshot_id).await?;
        if !created {
            // A snapshot of the same content that another record uploaded: claim it, as the
            // AMI was claimed, so that destroy finds it even if the AMI goes first.
            ec2.create_tags()
                .resources(&snapshot_id)
                .tags(tag(TAG_RECORD, id))
                .send()
                .await
                .map_err(|e| api_error("ec2:CreateTags", e))?;
        }
        Ok(ami_id)
    }
    .await;
    match registered {
        Ok(ami_id) => Ok(PublishedVariant { ami_id, linear_sha256 }),
        Err(e) => {
            if created {
                let _ = ec2.delete_snapshot().snapshot_id(&snapshot_id).send().await;
            }
            Err(e)
        }
    }
}

/// This account's snapshots tagged `key` = `value`.
async fn snapshots_tagged(
    ec2: &aws_sdk_ec2::Client,
    key: &str,
    value: &str,
) -> Result<Vec<aws_sdk_ec2::types::Snapshot>, CloudError> {
    let found = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(tag_filter(key, value))
        .send()
        .await
        .map_err(|e| api_error("ec2:DescribeSnapshots", e))?;
    Ok(found.snapshots.unwrap_or_default())
}

/// A completed snapshot of `payload` (id, LINEAR checksum); unfinished ones are deleted.
async fn finished_snapshot(ec2: &aws_sdk_ec2::Client, payload: &str) -> Result<Option<(String, String)>, CloudError> {
    let mut finished = None;
    for snapshot in &snapshots_tagged(ec2, TAG_PAYLOAD, payload).await? {
        let id = snapshot.snapshot_id().unwrap_or_default();
        match tag_value(snapshot.tags(), TAG_UPLOADED) {
            Some(linear) if finished.is_none() => finished = Some((id.to_owned(), linear.to_owned())),
            Some(_) => {}
            None => {
                ec2.delete_snapshot()
                    .snapshot_id(id)
                    .send()
                    .await
                    .map_err(|e| api_error("ec2:DeleteSnapshot", e))?;
            }
        }
    }
    Ok(finished)
}

async fn upload_payload(
    ec2: &aws_sdk_ec2::Client,
    ebs: &aws_sdk_ebs::Client,
    cache_dir: &Path,
    id: &str,
    build: &ImageBuild,
    variant: Variant,
    payload: &str,
) -> Result<crate::upload::Uploaded, CloudError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CloudError::Io { action, path, source }
    };
    std::fs::create_dir_all(cache_dir).map_err(io("creating", cache_dir))?;
    let disk_file = tempfile::Builder::new()
        .prefix(".payload-")
        .suffix(".img")
        .tempfile_in(cache_dir)
        .map_err(io("creating a payload disk in", cache_dir))?;
    let disk_path = disk_file.path().to_path_buf();
    let disk = tokio::task::block_in_place(|| match build.format() {
        ImageFormat::Uki => write_bootable_disk(disk_file.as_file(), &disk_path, build, variant),
        ImageFormat::Eif => write_disk(disk_file.as_file(), build, variant, payload),
    })
    .map_err(io("writing the image's disk", &disk_path))?;
    let tags = vec![
        (TAG_KIND.to_owned(), "payload".to_owned()),
        (TAG_PAYLOAD.to_owned(), payload.to_owned()),
        (TAG_VARIANT.to_owned(), variant.as_str().to_owned()),
        (TAG_MANIFEST.to_owned(), build.manifest_sha256()),
    ];
    let description = format!("Safebox payload: {variant} image of {}", build.manifest_sha256());
    let token = format!("{id}-{variant}-{}", &payload[..16]);
    let uploaded = upload_snapshot(
        ebs,
        ec2,
        &disk_path,
        &disk,
        &SnapshotRequest {
            description: &description,
            tags: &tags,
            client_token: &token,
        },
    )
    .await?;
    drop(disk_file);
    let marked = ec2
        .create_tags()
        .resources(&uploaded.snapshot_id)
        .tags(tag(TAG_UPLOADED, &uploaded.linear_sha256))
        .tags(tag(TAG_RECORD, id))
        .send()
        .await;
    if let Err(e) = marked {
        let _ = ec2.delete_snapshot().snapshot_id(&uploaded.snapshot_id).send().await;
        return Err(api_error("ec2:CreateTags", e));
    }
    Ok(uploaded)
}

/// Writes the bootable disk of a UKI build's `variant`; the UKI in it is checked against its
/// planned digest on the way, and the whole disk against the planned `disk_sha256`.
fn write_bootable_disk(
    file: &std::fs::File,
    path: &Path,
    build: &ImageBuild,
    variant: Variant,
) -> std::io::Result<safebox::image::disk::PayloadDisk> {
    let mut out = file.try_clone()?;
    let disk = build.write_disk(variant, &mut out)?;
    let planned = build.measurements(variant).disk_sha256.clone().unwrap_or_default();
    let actual = safebox::image::sha256_hex(std::fs::File::open(path)?)?;
    if actual != planned {
        return Err(std::io::Error::other(format!(
            "the {variant} disk hashes to {actual}, not the planned {planned}; plan again"
        )));
    }
    Ok(disk)
}

/// Writes the payload disk of `variant` and checks the EIF it holds against its digest.
fn write_disk(
    file: &std::fs::File,
    build: &ImageBuild,
    variant: Variant,
    payload: &str,
) -> std::io::Result<safebox::image::disk::PayloadDisk> {
    let (mut reader, mut writer) = std::io::pipe()?;
    let expected = build.measurements(variant).image_sha256.clone();
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || build.write_eif_hashed(variant, &mut writer));
        let seed: [u8; 32] = Sha256::digest(payload.as_bytes()).into();
        let eif_name = format!("{variant}.eif");
        let manifest = build.manifest().as_bytes();
        let seal_proof = build.seal_proof().as_bytes();
        let mut out = file.try_clone()?;
        let written = {
            let mut files = [
                PayloadFile {
                    name: &eif_name,
                    len: build.eif_len(variant),
                    reader: &mut reader,
                },
                PayloadFile {
                    name: MANIFEST_FILE,
                    len: manifest.len() as u64,
                    reader: &mut &manifest[..],
                },
                PayloadFile {
                    name: SEAL_PROOF_FILE,
                    len: seal_proof.len() as u64,
                    reader: &mut &seal_proof[..],
                },
            ];
            write_payload_disk(&mut out, &seed, "SAFEBOX", &mut files)
        };
        // Closing the read end stops the EIF writer if the disk writer gave up early.
        drop(reader);
        let produced = producer
            .join()
            .map_err(|_| std::io::Error::other("the EIF writer stopped"))?;
        let disk = written?;
        let actual = produced?;
        if actual != expected {
            return Err(std::io::Error::other(format!(
                "the {variant} EIF hashes to {actual}, not the planned {expected}; plan again"
            )));
        }
        Ok(disk)
    })
}

/// The AMI name: derived from the content, so one account holds one AMI per content.
fn ami_name(build: &ImageBuild, variant: Variant) -> String {
    let manifest: serde_json::Value = serde_json::from_str(build.manifest()).unwrap_or_default();
    let name: String = manifest["name"]
        .as_str()
        .unwrap_or("image")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "()[]./-'@_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    format!(
        "safebox-{name}-{variant}-{}",
        &build.measurements(variant).image_sha256[..16]
    )
}

/// Registers (or finds and claims) the AMI of `variant` on `snapshot_id`.
async fn register(
    ec2: &aws_sdk_ec2::Client,
    (id, user_tags): (&str, &Tags),
    build: &ImageBuild,
    variant: Variant,
    snapshot_id: &str,
) -> Result<String, CloudError> {
    let m = build.measurements(variant);
    let name = ami_name(build, variant);
    let existing = ec2
        .describe_images()
        .owners("self")
        .filters(filter("name", &name))
        .send()
        .await
        .map_err(|e| api_error("ec2:DescribeImages", e))?;
    let ami_id = match existing.images().first().and_then(|i| i.image_id()) {
        Some(ami) => ami.to_owned(),
        None => ec2
            .register_image()
            .name(&name)
            .description(format!(
                "Safebox {variant} image; manifest {}; {}",
                build.manifest_sha256(),
                match (&m.pcr4, &m.pcr0) {
                    (Some(pcr4), _) => format!("NitroTPM PCR4 {pcr4}"),
                    (None, pcr0) => format!("PCR0 {}", pcr0.as_deref().unwrap_or_default()),
                }
            ))
            .architecture(ArchitectureValues::X8664)
            .virtualization_type("hvm")
            .root_device_name(ROOT_DEVICE)
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(ROOT_DEVICE)
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(snapshot_id)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .boot_mode(BootModeValues::Uefi)
            .tpm_support(TpmSupportValues::V20)
            .imds_support(ImdsSupportValues::V20)
            .ena_support(true)
            .send()
            .await
            .map_err(|e| api_error("ec2:RegisterImage", e))?
            .image_id()
            .unwrap_or_default()
            .to_owned(),
    };
    // The measurements this format has: PCR0 to PCR2 of an EIF, NitroTPM PCR4, PCR7 and
    // PCR12 (and the disk's digest) of a UKI.
    let measured = [
        ("safebox:pcr0", &m.pcr0),
        ("safebox:pcr1", &m.pcr1),
        ("safebox:pcr2", &m.pcr2),
        ("safebox:pcr4", &m.pcr4),
        ("safebox:pcr7", &m.pcr7),
        ("safebox:pcr12", &m.pcr12),
        (TAG_DISK_SHA256, &m.disk_sha256),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.as_ref().map(|v| tag(key, v)));
    let tags: Vec<Tag> = [
        tag(TAG_RECORD, id),
        tag(TAG_KIND, "image"),
        tag(TAG_VARIANT, variant.as_str()),
        tag(TAG_FORMAT, build.format().as_str()),
        tag(TAG_MANIFEST, build.manifest_sha256()),
        tag(TAG_IMAGE_SHA256, &m.image_sha256),
        tag(TAG_SEAL_PROOF, build.seal_proof_sha256()),
        tag(TAG_SNAPSHOT, snapshot_id),
    ]
    .into_iter()
    .chain(measured)
    .chain(user_tags.iter().map(|(k, v)| tag(k, v)))
    .collect();
    let tagged = ec2.create_tags().resources(&ami_id).set_tags(Some(tags)).send().await;
    if let Err(e) = tagged {
        let _ = ec2.deregister_image().image_id(&ami_id).send().await;
        return Err(api_error("ec2:CreateTags", e));
    }
    Ok(ami_id)
}

/// An AMI of a record.
struct Ami {
    id: String,
    name: String,
    tags: Vec<Tag>,
}

impl Ami {
    fn variant(&self) -> Option<&str> {
        tag_value(&self.tags, TAG_VARIANT)
    }
}

/// Sets the user's `tags` on the AMIs of record `id` and removes the keys `removed` from them.
/// Their snapshots keep only ours: one snapshot may serve the AMIs of several records.
pub async fn retag(ec2: &aws_sdk_ec2::Client, id: &str, tags: &Tags, removed: &[String]) -> Result<(), CloudError> {
    let amis = amis_of(ec2, id).await?.into_iter().map(|ami| ami.id).collect();
    crate::retag_ec2(ec2, amis, tags, removed).await
}

/// The AMIs of record `id`.
async fn amis_of(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Vec<Ami>, CloudError> {
    check_record_id(RecordKind::Image, id)?;
    let found = ec2
        .describe_images()
        .owners("self")
        .filters(tag_filter(TAG_RECORD, id))
        .send()
        .await
        .map_err(|e| api_error("ec2:DescribeImages", e))?;
    Ok(found
        .images()
        .iter()
        .map(|i| Ami {
            id: i.image_id().unwrap_or_default().to_owned(),
            name: i.name().unwrap_or_default().to_owned(),
            tags: i.tags().to_vec(),
        })
        .collect())
}

/// Whether `snapshot_id` still exists and finished uploading.
async fn snapshot_exists(ec2: &aws_sdk_ec2::Client, snapshot_id: &str) -> Result<bool, CloudError> {
    match ec2.describe_snapshots().snapshot_ids(snapshot_id).send().await {
        Ok(found) => Ok(found
            .snapshots()
            .iter()
            .any(|s| tag_value(s.tags(), TAG_UPLOADED).is_some())),
        Err(e) => match api_error("ec2:DescribeSnapshots", e) {
            e if e.api_kind() == Some(ApiErrorKind::NotFound) => Ok(false),
            e => Err(e),
        },
    }
}

/// One sentence per AMI of record `id` that is missing or whose tags no longer match.
pub async fn check(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    expected: &ExpectedArtifacts,
) -> Result<Vec<String>, CloudError> {
    let amis = amis_of(ec2, id).await?;
    let mut problems = Vec::new();
    let disks = expected.disk_sha256.as_ref();
    for (variant, image_sha256, disk_sha256) in [
        (Variant::Dev, &expected.dev_sha256, disks.map(|d| &d.0)),
        (Variant::Prod, &expected.prod_sha256, disks.map(|d| &d.1)),
    ] {
        let Some(Ami { id: ami, tags, .. }) = amis.iter().find(|a| a.variant() == Some(variant.as_str())) else {
            problems.push(format!("the {variant} AMI of image {id} is missing"));
            continue;
        };
        match tag_value(tags, TAG_SNAPSHOT) {
            Some(snapshot) if snapshot_exists(ec2, snapshot).await? => {}
            Some(snapshot) => problems.push(format!("the snapshot {snapshot} of {ami} ({variant}) is missing")),
            None => problems.push(format!("{ami} ({variant}) names no snapshot")),
        }
        let wanted = [
            (TAG_IMAGE_SHA256, Some(image_sha256)),
            (TAG_MANIFEST, Some(&expected.manifest_sha256)),
            (TAG_SEAL_PROOF, Some(&expected.seal_proof_sha256)),
            (TAG_DISK_SHA256, disk_sha256),
        ];
        for (key, want) in wanted.into_iter().filter_map(|(key, want)| Some((key, want?))) {
            let have = tag_value(tags, key).unwrap_or("nothing");
            if have != want {
                problems.push(format!("{ami} ({variant}) has {key} = {have}, expected {want}"));
            }
        }
    }
    Ok(problems)
}

/// Sets the launch permissions of record `id`'s AMIs to exactly `account_ids`.
pub async fn share(ec2: &aws_sdk_ec2::Client, id: &str, account_ids: &[String]) -> Result<(), CloudError> {
    for Ami { id: ami, .. } in amis_of(ec2, id).await? {
        let current = ec2
            .describe_image_attribute()
            .image_id(&ami)
            .attribute(ImageAttributeName::LaunchPermission)
            .send()
            .await
            .map_err(|e| api_error("ec2:DescribeImageAttribute", e))?;
        let have: Vec<String> = current
            .launch_permissions()
            .iter()
            .filter_map(|p| p.user_id().map(str::to_owned))
            .collect();
        let permission = |account: &String| LaunchPermission::builder().user_id(account).build();
        let add: Vec<LaunchPermission> = account_ids
            .iter()
            .filter(|a| !have.contains(a))
            .map(permission)
            .collect();
        let remove: Vec<LaunchPermission> = have
            .iter()
            .filter(|a| !account_ids.contains(a))
            .map(permission)
            .collect();
        if add.is_empty() && remove.is_empty() {
            continue;
        }
        ec2.modify_image_attribute()
            .image_id(&ami)
            .launch_permission(
                LaunchPermissionModifications::builder()
                    .set_add((!add.is_empty()).then_some(add))
                    .set_remove((!remove.is_empty()).then_some(remove))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| api_error("ec2:ModifyImageAttribute", e))?;
    }
    Ok(())
}

/// A copy's way: from the source region's EC2 to the destination's.
pub struct CopyRoute<'a> {
    /// EC2 where the image was published.
    pub source: &'a aws_sdk_ec2::Client,
    /// Its region.
    pub source_region: &'a str,
    /// EC2 in the region the copy goes to.
    pub dest: &'a aws_sdk_ec2::Client,
    /// That region.
    pub dest_region: &'a str,
    /// When copies still pending are deleted and the copy fails.
    pub deadline: std::time::Instant,
}

const COPY_POLL: Duration = Duration::from_secs(5);
const TAG_COPIED_FROM: &str = "safebox:copied-from";

/// Copies both AMIs of record `id` along `route` with `CopyImage`, waits until they are
/// available, and tags each copy and its snapshot as the originals are tagged (with the
/// copy's own snapshot), so that in the destination the copy is found, checked, shared and
/// deleted like an original. A copy an earlier attempt made (found by its tags, or by its
/// content-derived name) is reused. All or nothing: on failure the copies made are deleted.
pub async fn copy(route: &CopyRoute<'_>, id: &str) -> Result<PublishedImage, CloudError> {
    let originals = amis_of(route.source, id).await?;
    let existing = amis_of(route.dest, id).await?;
    let copied = async {
        let mut made = Vec::new();
        for variant in [Variant::Dev, Variant::Prod] {
            let of_variant = |amis: &[Ami]| amis.iter().position(|a| a.variant() == Some(variant.as_str()));
            if let Some(i) = of_variant(&existing) {
                made.push(existing[i].id.clone());
                continue;
            }
            let Some(i) = of_variant(&originals) else {
                return Err(copy_error(
                    route,
                    id,
                    format!(
                        "its {variant} AMI is missing in {}; apply again, which republishes it there first",
                        route.source_region
                    ),
                ));
            };
            made.push(copy_variant(route, id, &originals[i]).await?);
        }
        let [dev, prod] = <[String; 2]>::try_from(made).unwrap_or_default();
        Ok(PublishedImage {
            dev_artifact: dev,
            prod_artifact: prod,
            snapshot_linear_sha256: None,
        })
    }
    .await;
    if copied.is_err() {
        let _ = delete(route.dest, id).await;
    }
    copied
}

fn copy_error(route: &CopyRoute<'_>, id: &str, reason: String) -> CloudError {
    CloudError::Copy {
        id: id.to_owned(),
        region: route.dest_region.to_owned(),
        reason,
    }
}

async fn copy_variant(route: &CopyRoute<'_>, id: &str, original: &Ami) -> Result<String, CloudError> {
    let dest = route.dest;
    let by_name = dest
        .describe_images()
        .owners("self")
        .filters(filter("name", &original.name))
        .send()
        .await
        .map_err(|e| api_error("ec2:DescribeImages", e))?;
    let ami = match by_name.images().first().and_then(|i| i.image_id()) {
        Some(ami) => ami.to_owned(),
        None => {
            let token = Sha256::digest(format!("{id}/{}/{}", original.id, route.dest_region));
            dest.copy_image()
                .source_image_id(&original.id)
                .source_region(route.source_region)
                .name(&original.name)
                .description(format!("Safebox: copy of {} from {}", original.id, route.source_region))
                .client_token(format!("safebox-{}", &hex::encode(token)[..48]))
                .send()
                .await
                .map_err(|e| api_error("ec2:CopyImage", e))?
                .image_id()
                .unwrap_or_default()
                .to_owned()
        }
    };
    // Untagged, the copy would be found by nothing but its name: on failure it goes now,
    // with its snapshot once that is known.
    let snapshot = match wait_available(route, id, &ami).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            let _ = dest.deregister_image().image_id(&ami).send().await;
            return Err(e);
        }
    };
    if let Err(e) = tag_copy(route, original, &ami, &snapshot).await {
        let _ = dest.deregister_image().image_id(&ami).send().await;
        let _ = dest.delete_snapshot().snapshot_id(&snapshot).send().await;
        return Err(e);
    }
    Ok(ami)
}

/// Tags the copy `ami` and its `snapshot` as `original` and its snapshot are tagged.
async fn tag_copy(route: &CopyRoute<'_>, original: &Ami, ami: &str, snapshot: &str) -> Result<(), CloudError> {
    let mut tags: Vec<Tag> = original
        .tags
        .iter()
        // Ours and the user's; AWS's own (`aws:`) are not the caller's to set.
        .filter(|t| t.key().is_some_and(|k| !k.starts_with("aws:") && k != TAG_SNAPSHOT))
        .cloned()
        .collect();
    tags.push(tag(TAG_SNAPSHOT, snapshot));
    tags.push(tag(TAG_COPIED_FROM, format!("{}/{}", route.source_region, original.id)));
    let snapshot_tags = original_snapshot_tags(route.source, original).await?;
    for (resource, tags) in [(snapshot, snapshot_tags), (ami, tags)] {
        route
            .dest
            .create_tags()
            .resources(resource)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| api_error("ec2:CreateTags", e))?;
    }
    Ok(())
}

/// Waits until the copy `ami` is available; returns its root snapshot.
async fn wait_available(route: &CopyRoute<'_>, id: &str, ami: &str) -> Result<String, CloudError> {
    let started = std::time::Instant::now();
    loop {
        let found = route
            .dest
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .map_err(|e| api_error("ec2:DescribeImages", e))?;
        let image = found.images().first();
        match image.and_then(|i| i.state()) {
            Some(ImageState::Available) => {
                let snapshot = image
                    .into_iter()
                    .flat_map(|i| i.block_device_mappings())
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                    .next();
                return snapshot.map(str::to_owned).ok_or_else(|| {
                    copy_error(
                        route,
                        id,
                        format!("the copy {ami} has no snapshot; delete it and apply again"),
                    )
                });
            }
            Some(ImageState::Pending) | None => {}
            Some(state) => {
                let reason = image
                    .and_then(|i| i.state_reason())
                    .and_then(|r| r.message())
                    .unwrap_or("no reason given");
                return Err(copy_error(
                    route,
                    id,
                    format!("the copy {ami} ended {state}: {reason}; apply again"),
                ));
            }
        }
        if std::time::Instant::now() > route.deadline {
            return Err(copy_error(
                route,
                id,
                format!(
                    "the copy {ami} was still pending after {} s, when the time allowed for copying ran out, so it was deleted",
                    started.elapsed().as_secs()
                ),
            ));
        }
        tokio::time::sleep(COPY_POLL).await;
    }
}

/// The `safebox:` tags of `original`'s snapshot (its payload digest and checksum).
async fn original_snapshot_tags(ec2: &aws_sdk_ec2::Client, original: &Ami) -> Result<Vec<Tag>, CloudError> {
    let Some(snapshot) = tag_value(&original.tags, TAG_SNAPSHOT) else {
        return Ok(Vec::new());
    };
    let found = ec2
        .describe_snapshots()
        .snapshot_ids(snapshot)
        .send()
        .await
        .map_err(|e| api_error("ec2:DescribeSnapshots", e))?;
    Ok(found
        .snapshots()
        .iter()
        .flat_map(|s| s.tags())
        .filter(|t| t.key().is_some_and(|k| k.starts_with("safebox:")))
        .cloned()
        .collect())
}

/// Deregisters the AMIs of record `id` and deletes their snapshots.
pub async fn delete(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<(), CloudError> {
    for Ami { id: ami, tags, .. } in amis_of(ec2, id).await? {
        ec2.deregister_image()
            .image_id(&ami)
            .send()
            .await
            .map_err(|e| api_error("ec2:DeregisterImage", e))?;
        if let Some(snapshot) = tag_value(&tags, TAG_SNAPSHOT) {
            delete_snapshot(ec2, snapshot).await?;
        }
    }
    // Snapshots whose AMI went some other way (deregistered by hand, say) are found by the
    // record they belong to.
    for snapshot in snapshots_tagged(ec2, TAG_RECORD, id)
        .await?
        .iter()
        .filter_map(|s| s.snapshot_id())
    {
        delete_snapshot(ec2, snapshot).await?;
    }
    Ok(())
}

/// Deletes `snapshot`; one already gone, or still used by an AMI of another record that
/// shares its content, is left alone.
async fn delete_snapshot(ec2: &aws_sdk_ec2::Client, snapshot: &str) -> Result<(), CloudError> {
    match ec2.delete_snapshot().snapshot_id(snapshot).send().await {
        Ok(_) => Ok(()),
        Err(e) => match api_error("ec2:DeleteSnapshot", e) {
            e if matches!(e.api_kind(), Some(ApiErrorKind::NotFound | ApiErrorKind::Conflict)) => Ok(()),
            e => Err(e),
        },
    }
}
