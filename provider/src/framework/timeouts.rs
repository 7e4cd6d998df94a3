//! The `timeouts` block, as HashiCorp's providers offer it: per-operation time limits.

use std::time::Duration;

use super::schema::{Attribute, Block, NestedBlock};
use super::types::Type;
use super::validators::{duration, parse_duration};
use super::value::Value;

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

/// The timeout for `operation` set in `resource`'s `timeouts` block, or `default`.
#[must_use]
pub fn timeout(resource: &Value, operation: &str, default: Duration) -> Duration {
    resource
        .get("timeouts")
        .get(operation)
        .as_str()
        .and_then(|text| parse_duration(text).ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_configured_value_or_the_default() {
        let block = timeouts_block(&["create", "delete"]);
        assert_eq!(block.block.attributes.len(), 2);
        let resource = Value::object([("timeouts", Value::object([("create", Value::string("2m"))]))]);
        assert_eq!(
            timeout(&resource, "create", Duration::from_secs(5)),
            Duration::from_secs(120)
        );
        assert_eq!(
            timeout(&resource, "delete", Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            timeout(&Value::Null, "create", Duration::from_secs(7)),
            Duration::from_secs(7)
        );
    }
}
