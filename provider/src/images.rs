//! Published images as the resources that use them see them: the artifact of a variant, its
//! measurements and the policy governing it, from the image's record.

use std::collections::BTreeMap;

use safebox::attest::document::DocumentKind;
use safebox::cloud::{ExpectedArtifacts, RecordKind};
use safebox::image::spec::ImageFormat;

use crate::framework::diag::Diagnostics;
use crate::framework::path::AttributePath;
use crate::record;
use crate::resource::Ctx;

/// One variant of a published image.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// The digests its artifacts must still have.
    pub expected: ExpectedArtifacts,
    /// The variant's artifact (a local path, or the AMI in the provider's region).
    pub artifact: String,
    /// The variant's image digest.
    pub image_sha256: String,
    /// The variant's PCRs, by index: PCR0 to PCR2 of an EIF, NitroTPM PCR4, PCR7 and PCR12 of
    /// a UKI.
    pub pcrs: BTreeMap<u32, String>,
    /// The image's format.
    pub format: ImageFormat,
    /// Whether the variant serves SSH: the development variant of an image with `dev_access`.
    pub ssh: bool,
    /// The policy governing the image, if any.
    pub policy_id: Option<String>,
}

impl ImageFacts {
    /// The kind of attestation document a box of this image presents.
    #[must_use]
    pub fn document_kind(&self) -> DocumentKind {
        DocumentKind::of_format(self.format)
    }

    /// For tests: the prod variant of an ungoverned image of `format` whose image PCRs are
    /// each their index as a repeated byte (PCR4 is `0404…`).
    #[cfg(test)]
    pub(crate) fn example(format: ImageFormat) -> Self {
        Self {
            expected: ExpectedArtifacts {
                dev_sha256: String::new(),
                prod_sha256: String::new(),
                disk_sha256: None,
                manifest_sha256: String::new(),
                seal_proof_sha256: String::new(),
            },
            artifact: String::new(),
            image_sha256: String::new(),
            pcrs: DocumentKind::of_format(format)
                .image_pcrs()
                .into_iter()
                .map(|i| (i, format!("{i:02x}").repeat(48)))
                .collect(),
            format,
            ssh: false,
            policy_id: None,
        }
    }
}

/// The digests the published artifacts of the image recorded as `image` must have.
#[must_use]
pub fn expected_artifacts(image: &serde_json::Value) -> ExpectedArtifacts {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let disk = |variant: &str| {
        image[format!("{variant}_measurements")]["disk_sha256"]
            .as_str()
            .map(str::to_owned)
    };
    ExpectedArtifacts {
        dev_sha256: text(&image["dev_measurements"]["image_sha256"]),
        prod_sha256: text(&image["prod_measurements"]["image_sha256"]),
        disk_sha256: disk("dev").zip(disk("prod")),
        manifest_sha256: text(&image["manifest_sha256"]),
        seal_proof_sha256: text(&image["seal_proof_sha256"]),
    }
}

/// The `variant` of the image `image_id`, which a resource references through `attribute`;
/// reports a missing image there.
pub async fn facts(
    ctx: &Ctx,
    image_id: &str,
    variant: &str,
    attribute: &str,
    diags: &mut Diagnostics,
) -> Option<ImageFacts> {
    let image = match record::raw(ctx, RecordKind::Image, image_id).await {
        Ok(Some(image)) => image,
        Ok(None) => {
            diags.error_at(
                AttributePath::attr_root(attribute),
                "No such safebox_image",
                format!("There is no safebox_image with id {image_id:?} in this backend. Reference one of this configuration (safebox_image.NAME.id)."),
            );
            return None;
        }
        Err(e) => {
            diags.error_at(
                AttributePath::attr_root(attribute),
                "Unreadable safebox_image",
                format!("{e}."),
            );
            return None;
        }
    };
    let measurements = &image[format!("{variant}_measurements")];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    // A provider working in a region the image was copied to launches from the copy.
    let copy = ctx
        .configured
        .cloud
        .regions()
        .map(|regions| &image["regional_amis"][regions.region()])
        .filter(|copy| !copy.is_null());
    let artifact = [format!("{variant}_artifact"), format!("{variant}_ami_id")]
        .iter()
        .find_map(|name| copy.unwrap_or(&image)[name].as_str().map(str::to_owned))
        .unwrap_or_default();
    let format = image["format"]
        .as_str()
        .and_then(ImageFormat::parse)
        .unwrap_or_default();
    Some(ImageFacts {
        expected: expected_artifacts(&image),
        artifact,
        image_sha256: text(&measurements["image_sha256"]),
        pcrs: DocumentKind::of_format(format)
            .image_pcrs()
            .into_iter()
            .filter_map(|i| Some((i, measurements[format!("pcr{i}")].as_str()?.to_owned())))
            .collect(),
        format,
        ssh: variant == "dev" && image["dev_access"].is_object(),
        policy_id: image["policy_id"].as_str().map(str::to_owned),
    })
}
