//! What a resource implements. The provider service ([`crate::provider`]) decodes requests,
//! runs the schema-driven validation and planning, and calls these for the rest.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::Configured;
use crate::framework::diag::Diagnostics;
use crate::framework::schema::Schema;
use crate::framework::value::Value;

/// What a resource operation runs against.
pub struct Ctx {
    /// The configured provider.
    pub configured: Arc<Configured>,
    /// Cancelled when Terraform asks the provider to stop (StopProvider); long operations
    /// watch it and give up cleanly.
    pub cancel: CancellationToken,
}

/// A managed resource type.
#[async_trait]
pub trait Resource: Send + Sync {
    /// The resource type name, e.g. `safebox_policy`.
    fn type_name(&self) -> &'static str;

    /// The schema.
    fn schema(&self) -> &Schema;

    /// Checks across attributes that validators cannot express. Values may be unknown.
    fn validate(&self, _config: &Value, _diags: &mut Diagnostics) {}

    /// Fills in what the resource computes at plan time. `planned` already has defaults,
    /// unknown markers and kept prior values; `prior` is null on create.
    async fn plan(&self, _ctx: &Ctx, _prior: &Value, _planned: &mut Value, _diags: &mut Diagnostics) {}

    /// Looks at a planned deletion (Terraform plans destroys through the provider too), to
    /// warn about what it will need.
    async fn plan_destroy(&self, _ctx: &Ctx, _prior: &Value, _diags: &mut Diagnostics) {}

    /// Creates the resource; returns its state, or null if nothing was created.
    async fn create(&self, ctx: &Ctx, planned: &Value, config: &Value, diags: &mut Diagnostics) -> Value;

    /// Reads the current state; null when the resource is gone.
    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value;

    /// Updates in place; returns the new state (the prior one if nothing changed).
    async fn update(&self, ctx: &Ctx, prior: &Value, planned: &Value, config: &Value, diags: &mut Diagnostics)
        -> Value;

    /// Deletes the resource.
    async fn delete(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics);

    /// The state to start an import from; Terraform then reads it. By default just the id.
    async fn import(&self, _ctx: &Ctx, id: &str, _diags: &mut Diagnostics) -> Value {
        Value::object([("id", Value::string(id))])
    }

    /// Rewrites stored state (JSON) from schema version `from` to the current one.
    ///
    /// # Errors
    /// A message for the user when the state cannot be upgraded.
    fn upgrade_state(&self, from: i64, _state: serde_json::Value) -> Result<serde_json::Value, String> {
        Err(format!(
            "state of schema version {from} cannot be upgraded to version {}",
            self.schema().version
        ))
    }
}

/// A data source type.
#[async_trait]
pub trait DataSource: Send + Sync {
    /// The data source type name, e.g. `safebox_attestation`.
    fn type_name(&self) -> &'static str;

    /// The schema.
    fn schema(&self) -> &Schema;

    /// Reads the data source for `config`; returns its state.
    async fn read(&self, ctx: &Ctx, config: &Value, diags: &mut Diagnostics) -> Value;
}
