//! An image's AMIs beyond what publishing makes: who else may launch them
//! (`launch_permission_account_ids`, the backend's [`Sharing`](safebox::cloud::Sharing)) and
//! their copies in other regions (`copy_to_regions` and `regional_amis`, its
//! [`Regions`](safebox::cloud::Regions)).

use std::time::{Duration, Instant};

use safebox::cloud::{Cloud, PublishedImage};

use crate::config::Capability;
use crate::framework::diag::Diagnostics;
use crate::framework::model::Tf;
use crate::framework::path::AttributePath;
use crate::framework::schema::Validator;
use crate::framework::validators::check;
use crate::framework::value::Value;
use crate::resource::Ctx;

use super::AmiCopyModel;

/// The attribute naming the accounts.
pub(super) const SHARED_WITH: &str = "launch_permission_account_ids";
/// The attribute naming the regions.
pub(super) const COPIED_TO: &str = "copy_to_regions";

/// Validates `launch_permission_account_ids`.
pub(super) fn account_ids() -> Validator {
    check("12-digit AWS account ids.", |value: &Value| {
        for (i, account) in value.as_list().iter().enumerate() {
            if let Some(account) = account.as_str() {
                if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "[{i}] is {account:?}; give 12-digit AWS account ids such as \"123456789012\""
                    ));
                }
            }
        }
        Ok(())
    })
}

/// Whether `name` looks like an AWS region name (`eu-west-1`, `us-gov-west-1`).
fn is_region_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let lower = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1].iter().all(lower)
        && parts[parts.len() - 1].len() <= 2
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// Validates `copy_to_regions`.
pub(super) fn region_names() -> Validator {
    check("AWS region names such as `eu-central-1`.", |value: &Value| {
        for region in value.as_list().iter().filter_map(Value::as_str) {
            if !is_region_name(region) {
                return Err(format!(
                    "holds {region:?}; give AWS region names such as \"eu-central-1\""
                ));
            }
        }
        Ok(())
    })
}

/// Checks at plan that the backend can share and copy as asked, and that no copy goes to the
/// region the image is published in anyway; whether all is well.
pub(super) fn plan(ctx: &Ctx, accounts: &[String], regions: &[String], diags: &mut Diagnostics) -> bool {
    let configured = &ctx.configured;
    if !accounts.is_empty()
        && !configured.require(Capability::Sharing, Some(AttributePath::attr_root(SHARED_WITH)), diags)
    {
        return false;
    }
    if !regions.is_empty() && !configured.require(Capability::Regions, Some(AttributePath::attr_root(COPIED_TO)), diags)
    {
        return false;
    }
    let home = configured.cloud.regions().map(|r| r.region());
    if let Some(home) = home.filter(|home| regions.iter().any(|r| r == home)) {
        diags.error_at(
            AttributePath::attr_root(COPIED_TO),
            "The image is published in this region already",
            format!("{COPIED_TO} holds {home:?}, the provider's region, where the image is published anyway. Remove it from the list."),
        );
        return false;
    }
    true
}

/// The backend working in `region`; `None` after reporting why it cannot.
pub(super) async fn in_region(ctx: &Ctx, region: &str, diags: &mut Diagnostics) -> Option<Box<dyn Cloud>> {
    let path = AttributePath::attr_root(COPIED_TO);
    let Some(regions) = ctx.configured.cloud.regions() else {
        ctx.configured.require(Capability::Regions, Some(path), diags);
        return None;
    };
    match regions.in_region(region).await {
        Ok(there) => Some(there),
        Err(e) => {
            diags.error_at(path, "Cannot work in the region", format!("{region}: {e}."));
            None
        }
    }
}

/// Lets exactly `accounts` launch the image `id` in its home region, or its copy in `region`.
pub(super) async fn share(ctx: &Ctx, id: &str, region: Option<&str>, accounts: &[String], diags: &mut Diagnostics) {
    let there;
    let cloud: &dyn Cloud = match region {
        None => &*ctx.configured.cloud,
        Some(region) => match in_region(ctx, region, diags).await {
            Some(cloud) => {
                there = cloud;
                &*there
            }
            None => return,
        },
    };
    let path = AttributePath::attr_root(SHARED_WITH);
    let shared = match cloud.sharing() {
        Some(sharing) => sharing.share_image(id, accounts).await,
        // Nobody else may launch it: as it already is where nothing can be shared.
        None if accounts.is_empty() => Ok(()),
        None => {
            ctx.configured.require(Capability::Sharing, Some(path), diags);
            return;
        }
    };
    if let Err(e) = shared {
        diags.error_at(path, "Cannot set the image's launch permissions", format!("{e}."));
    }
}

/// `regional_amis`' entry for a copy.
fn copy_value(copy: &PublishedImage) -> AmiCopyModel {
    AmiCopyModel {
        dev_ami_id: Tf::string(&copy.dev_artifact),
        prod_ami_id: Tf::string(&copy.prod_artifact),
    }
}

/// How long copying may take, and the `timeouts` attribute that says so
/// (`timeouts.create` or `timeouts.update`).
pub(super) struct Allowed {
    /// The time.
    pub duration: Duration,
    /// The attribute.
    pub attribute: &'static str,
}

/// Copies image `id` to each of `regions`, letting `accounts` launch each copy, all within
/// `allowed`; returns the copies made, by region, also when one fails (reported at
/// `copy_to_regions`).
pub(super) async fn copy_to(
    ctx: &Ctx,
    id: &str,
    (regions, accounts): (&[String], &[String]),
    allowed: &Allowed,
    diags: &mut Diagnostics,
) -> Vec<(String, AmiCopyModel)> {
    let mut copies = Vec::new();
    if regions.is_empty() {
        return copies;
    }
    let Some(home) = ctx.configured.cloud.regions() else {
        ctx.configured
            .require(Capability::Regions, Some(AttributePath::attr_root(COPIED_TO)), diags);
        return copies;
    };
    let deadline = Instant::now() + allowed.duration;
    for region in regions {
        let left = deadline.saturating_duration_since(Instant::now());
        match super::block_on(home.copy_image(id, region, left)) {
            Ok(copy) => copies.push((region.clone(), copy_value(&copy))),
            Err(e) => {
                diags.error_at(
                    AttributePath::attr_root(COPIED_TO),
                    "Cannot copy the image",
                    format!(
                        "{e}. The copies made before are kept. Apply again; if copies into these regions take longer than {:?}, raise {}.",
                        allowed.duration, allowed.attribute
                    ),
                );
                return copies;
            }
        }
        if !accounts.is_empty() {
            share(ctx, id, Some(region), accounts, diags).await;
            if diags.has_errors() {
                return copies;
            }
        }
    }
    copies
}

/// Deletes the copies of image `id` in `regions`; reports the first that fails, at
/// `copy_to_regions`, and returns whether all went.
pub(super) async fn delete_copies(ctx: &Ctx, id: &str, regions: &[String], diags: &mut Diagnostics) -> bool {
    for region in regions {
        let Some(there) = in_region(ctx, region, diags).await else {
            return false;
        };
        if let Err(e) = there.delete_image(id).await {
            diags.error_at(
                AttributePath::attr_root(COPIED_TO),
                "Cannot delete a copy of the image",
                format!("Deleting the copy in {region} failed: {e}; apply again."),
            );
            return false;
        }
    }
    true
}

/// One sentence per artifact of the copies of image `id` in `regions` that is missing or
/// changed, each naming its region.
pub(super) async fn check_copies(
    ctx: &Ctx,
    id: &str,
    regions: &[String],
    expected: &safebox::cloud::ExpectedArtifacts,
    diags: &mut Diagnostics,
) -> Option<Vec<String>> {
    let mut problems = Vec::new();
    for region in regions {
        let there = in_region(ctx, region, diags).await?;
        match there.check_image(id, expected).await {
            Ok(found) => problems.extend(found.into_iter().map(|p| format!("in {region}: {p}"))),
            Err(e) => {
                diags.error("Cannot check the image's artifacts", format!("{e}."));
                return None;
            }
        }
    }
    Some(problems)
}

#[cfg(test)]
mod tests {
    use super::is_region_name;

    #[test]
    fn region_names_are_told_apart_from_near_misses() {
        for good in [
            "eu-west-1",
            "us-gov-west-1",
            "ap-southeast-2",
            "il-central-1",
            "cn-northwest-1",
        ] {
            assert!(is_region_name(good), "{good}");
        }
        for bad in [
            "",
            "eu",
            "eu-west",
            "eu_west_1",
            "EU-WEST-1",
            "eu-west-",
            "eu--1",
            "europe-west-1",
            "eu-west-123",
            "eu-west-1a",
        ] {
            assert!(!is_region_name(bad), "{bad}");
        }
    }
}
