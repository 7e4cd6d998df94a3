//! One file per resource type.

pub mod image;
pub mod policy;
pub mod record;

use std::sync::Arc;

use crate::resource::Resource;

/// Every resource type the provider serves.
#[must_use]
pub fn all() -> Vec<Arc<dyn Resource>> {
    vec![
        Arc::new(image::ImageResource::new()),
        Arc::new(policy::PolicyResource::new()),
    ]
}
