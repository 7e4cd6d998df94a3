//! What a resource implements. The provider service ([`crate::provider`]) decodes requests,
//! runs the schema-driven validation and planning, and calls these for the rest: a resource
//! implements [`Resource`] on its typed model, and [`Typed`] serves it as an [`AnyResource`].

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::Configured;
use crate::framework::diag::Diagnostics;
use crate::framework::model::{Fields, Model};
use crate::framework::path::AttributePath;
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

/// A managed resource type, written against its model: the provider service hands it typed
/// values ([`Resource::Model`]) converted in one place ([`Typed`]), so no resource reads or
/// writes an attribute by name.
#[async_trait]
pub trait Resource: Send + Sync {
    /// The resource's value as a struct (see [`crate::framework::model`]).
    type Model: Model + Fields + Clone + Send + Sync;

    /// The resource type name, e.g. `safebox_policy`.
    fn type_name(&self) -> &'static str;

    /// The schema.
    fn schema(&self) -> &Schema;

    /// Checks across attributes that validators cannot express. Values may be unknown.
    fn validate(&self, _config: &Self::Model, _diags: &mut Diagnostics) {}

    /// Fills in what the resource computes at plan time. `planned` already has defaults,
    /// unknown markers and what the plan modifiers kept; `prior` is `None` on create. Returns
    /// the paths whose change replaces the resource beyond those the schema's modifiers name
    /// (the framework's `ModifyPlanResponse.RequiresReplace`).
    async fn plan(
        &self,
        _ctx: &Ctx,
        _prior: Option<&Self::Model>,
        _planned: &mut Self::Model,
        _diags: &mut Diagnostics,
    ) -> Vec<AttributePath> {
        Vec::new()
    }

    /// Looks at a planned deletion (Terraform plans destroys through the provider too), to
    /// warn about what it will need.
    async fn plan_destroy(&self, _ctx: &Ctx, _prior: &Self::Model, _diags: &mut Diagnostics) {}

    /// Creates the resource; returns its state, or `None` if nothing was created.
    async fn create(
        &self,
        ctx: &Ctx,
        planned: &Self::Model,
        config: &Self::Model,
        diags: &mut Diagnostics,
    ) -> Option<Self::Model>;

    /// Reads the current state; `None` when the resource is gone.
    async fn read(&self, ctx: &Ctx, state: &Self::Model, diags: &mut Diagnostics) -> Option<Self::Model>;

    /// Updates in place; returns the new state (the prior one if nothing changed).
    async fn update(
        &self,
        ctx: &Ctx,
        prior: &Self::Model,
        planned: &Self::Model,
        config: &Self::Model,
        diags: &mut Diagnostics,
    ) -> Self::Model;

    /// Deletes the resource.
    async fn delete(&self, ctx: &Ctx, prior: &Self::Model, diags: &mut Diagnostics);

    /// The state to start an import from (Terraform then reads it); `None` when there is
    /// nothing to import.
    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Option<Self::Model>;

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

/// A resource as the provider service sees it: values untyped, as they come off the wire.
#[async_trait]
pub trait AnyResource: Send + Sync {
    /// The resource type name.
    fn type_name(&self) -> &'static str;

    /// The schema.
    fn schema(&self) -> &Schema;

    /// See [`Resource::validate`].
    fn validate(&self, config: &Value, diags: &mut Diagnostics);

    /// See [`Resource::plan`]; `prior` is null on create.
    async fn plan(&self, ctx: &Ctx, prior: &Value, planned: &mut Value, diags: &mut Diagnostics) -> Vec<AttributePath>;

    /// See [`Resource::plan_destroy`].
    async fn plan_destroy(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics);

    /// See [`Resource::create`]; null when nothing was created.
    async fn create(&self, ctx: &Ctx, planned: &Value, config: &Value, diags: &mut Diagnostics) -> Value;

    /// See [`Resource::read`]; null when gone.
    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value;

    /// See [`Resource::update`].
    async fn update(&self, ctx: &Ctx, prior: &Value, planned: &Value, config: &Value, diags: &mut Diagnostics)
        -> Value;

    /// See [`Resource::delete`].
    async fn delete(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics);

    /// See [`Resource::import`]; null when there is nothing.
    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Value;

    /// See [`Resource::upgrade_state`].
    ///
    /// # Errors
    /// As [`Resource::upgrade_state`].
    fn upgrade_state(&self, from: i64, state: serde_json::Value) -> Result<serde_json::Value, String>;
}

/// A [`Resource`] served untyped: the one place where its values become models and back.
pub struct Typed<R>(pub R);

/// `value` as model `M`; a value that does not fit is a provider bug, reported at its path.
fn model<M: Model>(value: &Value, diags: &mut Diagnostics) -> Option<M> {
    match M::from_value(value, &AttributePath::root()) {
        Ok(model) => Some(model),
        Err(e) => {
            diags.error_at(
                e.path.clone(),
                "Provider bug: a value does not fit its model",
                format!("{e}. Please report this with the configuration that caused it."),
            );
            None
        }
    }
}

fn value_of<M: Model>(model: Option<M>) -> Value {
    model.map_or(Value::Null, |m| m.to_value())
}

#[async_trait]
impl<R: Resource> AnyResource for Typed<R> {
    fn type_name(&self) -> &'static str {
        self.0.type_name()
    }

    fn schema(&self) -> &Schema {
        self.0.schema()
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        // A value of the wrong shape here is the user's (2.5 for a whole number, say), and
        // the schema's validators have said so at its path.
        if let Ok(config) = R::Model::from_value(config, &AttributePath::root()) {
            self.0.validate(&config, diags);
        }
    }

    async fn plan(&self, ctx: &Ctx, prior: &Value, planned: &mut Value, diags: &mut Diagnostics) -> Vec<AttributePath> {
        let prior: Option<R::Model> = if prior.is_null() { None } else { model(prior, diags) };
        let Some(mut typed) = model::<R::Model>(planned, diags) else {
            return Vec::new();
        };
        let replace = self.0.plan(ctx, prior.as_ref(), &mut typed, diags).await;
        *planned = typed.to_value();
        replace
    }

    async fn plan_destroy(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) {
        if let Some(prior) = model(prior, diags) {
            self.0.plan_destroy(ctx, &prior, diags).await;
        }
    }

    async fn create(&self, ctx: &Ctx, planned: &Value, config: &Value, diags: &mut Diagnostics) -> Value {
        let (Some(planned), Some(config)) = (model(planned, diags), model(config, diags)) else {
            return Value::Null;
        };
        value_of(self.0.create(ctx, &planned, &config, diags).await)
    }

    async fn read(&self, ctx: &Ctx, state: &Value, diags: &mut Diagnostics) -> Value {
        let Some(state) = model(state, diags) else {
            return Value::Null;
        };
        value_of(self.0.read(ctx, &state, diags).await)
    }

    async fn update(
        &self,
        ctx: &Ctx,
        prior: &Value,
        planned: &Value,
        config: &Value,
        diags: &mut Diagnostics,
    ) -> Value {
        let (Some(typed_prior), Some(planned), Some(config)) = (
            model::<R::Model>(prior, diags),
            model(planned, diags),
            model(config, diags),
        ) else {
            return prior.clone();
        };
        self.0
            .update(ctx, &typed_prior, &planned, &config, diags)
            .await
            .to_value()
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value, diags: &mut Diagnostics) {
        if let Some(prior) = model(prior, diags) {
            self.0.delete(ctx, &prior, diags).await;
        }
    }

    async fn import(&self, ctx: &Ctx, id: &str, diags: &mut Diagnostics) -> Value {
        value_of(self.0.import(ctx, id, diags).await)
    }

    fn upgrade_state(&self, from: i64, state: serde_json::Value) -> Result<serde_json::Value, String> {
        self.0.upgrade_state(from, state)
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
