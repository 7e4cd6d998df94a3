//! The `timeouts` block, as HashiCorp's providers offer it: per-operation time limits.

use std::time::Duration;

use super::model::Tf;
use super::schema::{Attribute, Block, NestedBlock};
use super::types::Type;
use super::validators::{duration, parse_duration};

/// A `timeouts` block with one optional duration attribute per operation in `operations`
/// (`create`, `read`, `update`, `delete`).
#[must_use]
pub fn timeouts_block(operations: &[&'static str]) -> NestedBlock {
    NestedBlock::single(
        "timeouts",
        Block::new(
            operations
                .iter()
                .map(|op| {
                    Attribute::optional(op, Type::String)
                        .describe("How long the operation may take, e.g. \"10m\".")
                        .validate(duration())
                })
                .collect(),
        ),
    )
}

crate::model! {
    /// A `timeouts` block of create and delete limits.
    pub struct CreateDeleteTimeouts {
        /// How long creating may take.
        create: Tf<String>,
        /// How long deleting may take.
        delete: Tf<String>,
    }
}

/// The limit a `timeouts` attribute sets, or `default`.
#[must_use]
pub fn limit(setting: &Tf<String>, default: Duration) -> Duration {
    setting
        .as_deref()
        .and_then(|text| parse_duration(text).ok())
        .unwrap_or(default)
}

impl CreateDeleteTimeouts {
    /// The create limit of `timeouts` (null when the block is absent), or `default`.
    #[must_use]
    pub fn create_of(timeouts: &Tf<Self>, default: Duration) -> Duration {
        timeouts.known().map_or(default, |t| limit(&t.create, default))
    }

    /// The delete limit of `timeouts`, or `default`.
    #[must_use]
    pub fn delete_of(timeouts: &Tf<Self>, default: Duration) -> Duration {
        timeouts.known().map_or(default, |t| limit(&t.delete, default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_configured_value_or_the_default() {
        let block = timeouts_block(&["create", "delete"]);
        crate::framework::model::check_model::<CreateDeleteTimeouts>(&block.block);
        let timeouts = Tf::Known(CreateDeleteTimeouts {
            create: Tf::string("2m"),
            delete: Tf::Null,
        });
        let five = Duration::from_secs(5);
        assert_eq!(
            CreateDeleteTimeouts::create_of(&timeouts, five),
            Duration::from_secs(120)
        );
        assert_eq!(CreateDeleteTimeouts::delete_of(&timeouts, five), five);
        assert_eq!(CreateDeleteTimeouts::create_of(&Tf::Null, five), five);
    }
}
