//! The `tags` argument of the resources that create cloud objects (`safebox_image`,
//! `safebox_enclave`, `safebox_sealed_key`), as terraform-provider-aws users know it: the tags
//! go on the objects as they are created (so tag policies that require them at creation
//! hold), and a change of tags is made in place, never by replacing the resource.

use safebox::cloud::{Cloud, Tagged, Tags};

use crate::framework::diag::Diagnostics;
use crate::framework::model::StringMap;
use crate::framework::path::AttributePath;
use crate::framework::schema::Attribute;
use crate::framework::types::Type;
use crate::framework::validators::check;
use crate::framework::value::Value;

/// How many tags the user may set: EC2 and KMS allow 50 per object, and the backend's own
/// (`safebox:` keys and `Name`) take up to 16.
const MOST: usize = 34;

/// The `tags` attribute: optional, changed in place.
pub fn attribute() -> Attribute {
    Attribute::optional("tags", Type::map(Type::String))
        .describe("Tags for the cloud objects this resource creates (aws backend: AMIs and their regional copies, the instance and its volumes, the KMS key), set as they are created and changed in place. At most 34; keys 1 to 128 characters, values up to 256; keys may not start with `aws:` or `safebox:` (AWS's and the provider's own). The local backend creates no cloud objects and keeps them in state only.")
        .validate(check(
            "At most 34 tags; keys of 1 to 128 characters not starting with `aws:` or `safebox:`; values of up to 256 characters.",
            |value: &Value| {
                let tags = value.as_map().map(|m| m.iter().collect::<Vec<_>>()).unwrap_or_default();
                if tags.len() > MOST {
                    return Err(format!("has {} tags; at most {MOST} fit beside the provider's own: drop some", tags.len()));
                }
                for (key, value) in tags {
                    let reserved = ["aws:", "safebox:"].into_iter().find(|p| key.to_ascii_lowercase().starts_with(p));
                    if let Some(prefix) = reserved {
                        return Err(format!("[{key:?}]: keys starting with {prefix:?} are reserved (AWS's and the provider's own tags); choose another key"));
                    }
                    if key.is_empty() || key.chars().count() > 128 {
                        return Err(format!("[{key:?}]: a key has 1 to 128 characters"));
                    }
                    if value.as_str().is_some_and(|v| v.chars().count() > 256) {
                        return Err(format!("[{key:?}]: a value has at most 256 characters"));
                    }
                }
                Ok(())
            },
        ))
}

/// The tags a model's `tags` holds (none when null).
#[must_use]
pub fn of(tags: &StringMap) -> Tags {
    tags.entries().unwrap_or_default()
}

/// Changes the tags of `target` in `clouds` (the home region's, then each copy's) from
/// `prior` to `planned`; whether that worked (failures are reported at `tags`). A backend that
/// creates no cloud objects has nothing to change.
pub async fn retag(
    clouds: &[&dyn Cloud],
    target: Tagged<'_>,
    (prior, planned): (&StringMap, &StringMap),
    diags: &mut Diagnostics,
) -> bool {
    let (prior, planned) = (of(prior), of(planned));
    let set: Tags = planned
        .iter()
        .filter(|(k, v)| prior.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed: Vec<String> = prior.keys().filter(|k| !planned.contains_key(*k)).cloned().collect();
    if set.is_empty() && removed.is_empty() {
        return true;
    }
    for cloud in clouds {
        let Some(tagging) = cloud.tagging() else { continue };
        if let Err(e) = tagging.retag(target, &set, &removed).await {
            diags.error_at(
                AttributePath::attr_root("tags"),
                "Cannot change the tags",
                format!("{e}. The tags in state are the ones before this apply; apply again once the cause is fixed."),
            );
            return false;
        }
    }
    true
}
