//! The `timeouts` block, as HashiCorp's providers offer it: per-operation time limits.

use std::time::Duration;

use super::diag::Diagnostics;
use super::model::Tf;
use super::schema::{Attribute, Block, NestedBlock};
use super::types::Type;
use super::validators::{duration, parse_duration};

/// A `timeouts` block with one optional duration attribute per operation in `operations`
/// (`create`, `read`, `update`, `delete`), described by `description` (what each bounds, and
/// the defaults).
#[must_use]
pub fn timeouts_block(operations: &[&'static str], description: &'static str) -> NestedBlock {
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
        )
        .describe(description),
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

crate::model! {
    /// A `timeouts` block of create and update limits.
    pub struct CreateUpdateTimeouts {
        /// How long creating may take.
        create: Tf<String>,
        /// How long updating may take.
        update: Tf<String>,
    }
}

/// The limit that the attribute `operation` picks from a `timeouts` block (null when the block
/// is absent) sets, or `default`; e.g. `limit(&planned.timeouts, |t| &t.create, FIVE_MINUTES)`.
#[must_use]
pub fn limit<T>(timeouts: &Tf<T>, operation: impl FnOnce(&T) -> &Tf<String>, default: Duration) -> Duration {
    timeouts
        .known()
        .and_then(|t| operation(t).as_deref())
        .and_then(|text| parse_duration(text).ok())
        .unwrap_or(default)
}

/// The result of `operation` when it succeeds within `allowed`. Otherwise an error in `diags`:
/// summary `failed` with the operation's error, or, when the time ran out first, the `late`
/// summary and detail (what is left where, and that raising the limit is one way out).
pub async fn within<T, E: std::fmt::Display>(
    allowed: Duration,
    operation: impl std::future::Future<Output = Result<T, E>>,
    failed: &str,
    late: (&str, String),
    diags: &mut Diagnostics,
) -> Option<T> {
    match tokio::time::timeout(allowed, operation).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            diags.error(failed, format!("{e}."));
            None
        }
        Err(_) => {
            diags.error(late.0, late.1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_configured_value_or_the_default() {
        let block = timeouts_block(&["create", "delete"], "");
        crate::framework::model::check_model::<CreateDeleteTimeouts>(&block.block);
        crate::framework::model::check_model::<CreateUpdateTimeouts>(&timeouts_block(&["create", "update"], "").block);
        let timeouts = Tf::Known(CreateDeleteTimeouts {
            create: Tf::string("2m"),
            delete: Tf::Null,
        });
        let five = Duration::from_secs(5);
        assert_eq!(limit(&timeouts, |t| &t.create, five), Duration::from_secs(120));
        assert_eq!(limit(&timeouts, |t| &t.delete, five), five);
        assert_eq!(limit(&Tf::<CreateDeleteTimeouts>::Null, |t| &t.create, five), five);
        let unknown = Tf::Known(CreateUpdateTimeouts {
            create: Tf::Unknown,
            update: Tf::string("1h30m"),
        });
        assert_eq!(limit(&unknown, |t| &t.create, five), five);
        assert_eq!(limit(&unknown, |t| &t.update, five), Duration::from_secs(5400));
    }
}
