//! The `tfplugin6.Provider` gRPC service: decodes each request, runs the schema-driven steps
//! and hands the rest to the resource. Nothing that arrives on the wire can make it panic: a
//! malformed request becomes an error diagnostic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use safebox_proto::tfplugin6 as pb;
use safebox_proto::tfplugin6::provider_server::Provider;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::{self, Configured};
use crate::framework::diag::Diagnostics;
use crate::framework::function::Function;
use crate::framework::path::AttributePath;
use crate::framework::plan::{null_write_only, plan_block, replacements, validate_block};
use crate::framework::schema::Schema;
use crate::framework::types::Type;
use crate::framework::value::Value;
use crate::log;
use crate::resource::{AnyResource, Ctx, DataSource};
use crate::{data_sources, functions, resources};

/// The Safebox provider service.
pub struct SafeboxProvider {
    provider_schema: Schema,
    resources: BTreeMap<&'static str, Arc<dyn AnyResource>>,
    data_sources: BTreeMap<&'static str, Arc<dyn DataSource>>,
    functions: BTreeMap<&'static str, Arc<dyn Function>>,
    configured: Arc<RwLock<Option<Arc<Configured>>>>,
    stop: Mutex<CancellationToken>,
}

/// What the provider does when its process ends: release the store's apply lease.
pub struct Closer(Arc<RwLock<Option<Arc<Configured>>>>);

impl Closer {
    /// Releases the apply lease, if this process took it.
    pub async fn close(self) {
        let configured = self.0.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(configured) = configured {
            configured.lease.release().await;
        }
    }
}

impl Default for SafeboxProvider {
    fn default() -> Self {
        Self::new(resources::all(), data_sources::all(), functions::all())
    }
}

impl SafeboxProvider {
    /// A provider serving `resources`, `data_sources` and `functions`.
    #[must_use]
    pub fn new(
        resources: Vec<Arc<dyn AnyResource>>,
        data_sources: Vec<Arc<dyn DataSource>>,
        functions: Vec<Arc<dyn Function>>,
    ) -> Self {
        Self {
            provider_schema: config::schema(),
            resources: resources.into_iter().map(|r| (r.type_name(), r)).collect(),
            data_sources: data_sources.into_iter().map(|d| (d.type_name(), d)).collect(),
            functions: functions.into_iter().map(|f| (f.name(), f)).collect(),
            configured: Arc::new(RwLock::new(None)),
            stop: Mutex::new(CancellationToken::new()),
        }
    }

    /// What to run when the process ends, once serving is over.
    #[must_use]
    pub fn closer(&self) -> Closer {
        Closer(Arc::clone(&self.configured))
    }

    fn resource(&self, type_name: &str, diags: &mut Diagnostics) -> Option<Arc<dyn AnyResource>> {
        let found = self.resources.get(type_name).cloned();
        if found.is_none() {
            diags.error(
                "Unknown resource type",
                format!(
                    "This provider has no resource type {type_name:?}; it has {}.",
                    self.resources.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        found
    }

    fn data_source(&self, type_name: &str, diags: &mut Diagnostics) -> Option<Arc<dyn DataSource>> {
        let found = self.data_sources.get(type_name).cloned();
        if found.is_none() {
            diags.error(
                "Unknown data source",
                format!(
                    "This provider has no data source {type_name:?}; it has {}.",
                    self.data_sources.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        found
    }

    fn ctx(&self, diags: &mut Diagnostics) -> Option<Ctx> {
        let configured = self.configured.read().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(configured) = configured else {
            diags.error(
                "Provider not configured",
                "Terraform asked for a resource operation before configuring the provider. This is a bug in the caller; run the operation through terraform.",
            );
            return None;
        };
        let cancel = self.stop.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Some(Ctx { configured, cancel })
    }
}

/// Decodes a DynamicValue (MessagePack or JSON) of type `ty`; absent means null.
fn decode(value: Option<&pb::DynamicValue>, ty: &Type, what: &str, diags: &mut Diagnostics) -> Option<Value> {
    let Some(value) = value else { return Some(Value::Null) };
    let decoded = if !value.msgpack.is_empty() {
        Value::from_msgpack(&value.msgpack, ty)
    } else if !value.json.is_empty() {
        serde_json::from_slice(&value.json)
            .map_err(|e| crate::framework::value::DecodeError {
                path: AttributePath::root(),
                message: format!("malformed JSON: {e}"),
            })
            .and_then(|json| Value::from_json(&json, ty, &AttributePath::root()))
    } else {
        Ok(Value::Null)
    };
    match decoded {
        Ok(v) => Some(v),
        Err(e) => {
            let detail = format!("The {what} sent by Terraform could not be decoded: {}.", e.message);
            if e.path.steps().is_empty() {
                diags.error("Malformed request", detail);
            } else {
                diags.error_at(e.path, "Malformed request", detail);
            }
            None
        }
    }
}

fn encode(value: &Value, ty: &Type) -> Option<pb::DynamicValue> {
    Some(pb::DynamicValue {
        msgpack: value.to_msgpack(ty),
        json: Vec::new(),
    })
}

fn capabilities() -> pb::ServerCapabilities {
    pb::ServerCapabilities {
        plan_destroy: true,
        get_provider_schema_optional: true,
        move_resource_state: false,
        generate_resource_config: false,
    }
}

#[tonic::async_trait]
impl Provider for SafeboxProvider {
    async fn get_metadata(
        &self,
        _: Request<pb::get_metadata::Request>,
    ) -> Result<Response<pb::get_metadata::Response>, Status> {
        Ok(Response::new(pb::get_metadata::Response {
            server_capabilities: Some(capabilities()),
            resources: self
                .resources
                .keys()
                .map(|name| pb::get_metadata::ResourceMetadata {
                    type_name: (*name).to_owned(),
                })
                .collect(),
            data_sources: self
                .data_sources
                .keys()
                .map(|name| pb::get_metadata::DataSourceMetadata {
                    type_name: (*name).to_owned(),
                })
                .collect(),
            functions: self
                .functions
                .keys()
                .map(|name| pb::get_metadata::FunctionMetadata {
                    name: (*name).to_owned(),
                })
                .collect(),
            ..Default::default()
        }))
    }

    async fn get_provider_schema(
        &self,
        _: Request<pb::get_provider_schema::Request>,
    ) -> Result<Response<pb::get_provider_schema::Response>, Status> {
        Ok(Response::new(pb::get_provider_schema::Response {
            provider: Some(self.provider_schema.to_proto()),
            resource_schemas: self
                .resources
                .iter()
                .map(|(name, r)| ((*name).to_owned(), r.schema().to_proto()))
                .collect(),
            data_source_schemas: self
                .data_sources
                .iter()
                .map(|(name, d)| ((*name).to_owned(), d.schema().to_proto()))
                .collect(),
            functions: self
                .functions
                .iter()
                .map(|(name, f)| ((*name).to_owned(), f.to_proto()))
                .collect(),
            server_capabilities: Some(capabilities()),
            ..Default::default()
        }))
    }

    async fn validate_provider_config(
        &self,
        request: Request<pb::validate_provider_config::Request>,
    ) -> Result<Response<pb::validate_provider_config::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        if let Some(config) = decode(
            request.config.as_ref(),
            &self.provider_schema.value_type(),
            "provider configuration",
            &mut diags,
        ) {
            validate_block(&self.provider_schema.block, &config, &AttributePath::root(), &mut diags);
            config::validate(&config, &mut diags);
        }
        Ok(Response::new(pb::validate_provider_config::Response {
            diagnostics: diags.into_proto(),
        }))
    }

    async fn configure_provider(
        &self,
        request: Request<pb::configure_provider::Request>,
    ) -> Result<Response<pb::configure_provider::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        if let Some(config) = decode(
            request.config.as_ref(),
            &self.provider_schema.value_type(),
            "provider configuration",
            &mut diags,
        ) {
            if let Some(configured) = config::configure(&config, &mut diags).await {
                log::info(&format!("configured the {} backend", configured.cloud.name()));
                *self.configured.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(configured));
            }
        }
        Ok(Response::new(pb::configure_provider::Response {
            diagnostics: diags.into_proto(),
        }))
    }

    async fn validate_resource_config(
        &self,
        request: Request<pb::validate_resource_config::Request>,
    ) -> Result<Response<pb::validate_resource_config::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        if let Some(resource) = self.resource(&request.type_name, &mut diags) {
            let schema = resource.schema();
            if let Some(config) = decode(
                request.config.as_ref(),
                &schema.value_type(),
                "configuration",
                &mut diags,
            ) {
                validate_block(&schema.block, &config, &AttributePath::root(), &mut diags);
                resource.validate(&config, &mut diags);
                diags.dedupe_paths();
            }
        }
        Ok(Response::new(pb::validate_resource_config::Response {
            diagnostics: diags.into_proto(),
        }))
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<pb::upgrade_resource_state::Request>,
    ) -> Result<Response<pb::upgrade_resource_state::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        let mut upgraded_state = None;
        if let Some(resource) = self.resource(&request.type_name, &mut diags) {
            upgraded_state = upgrade(
                resource.as_ref(),
                request.version,
                request.raw_state.as_ref(),
                &mut diags,
            )
            .and_then(|v| encode(&v, &resource.schema().value_type()));
        }
        Ok(Response::new(pb::upgrade_resource_state::Response {
            upgraded_state,
            diagnostics: diags.into_proto(),
        }))
    }

    async fn read_resource(
        &self,
        request: Request<pb::read_resource::Request>,
    ) -> Result<Response<pb::read_resource::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        let mut new_state = None;
        if let (Some(resource), Some(ctx)) = (self.resource(&request.type_name, &mut diags), self.ctx(&mut diags)) {
            let ty = resource.schema().value_type();
            if let Some(state) = decode(request.current_state.as_ref(), &ty, "current state", &mut diags) {
                let read = if state.is_null() {
                    Value::Null
                } else {
                    resource.read(&ctx, &state, &mut diags).await
                };
                // On a failed read the prior state stands, so nothing is forgotten.
                new_state = encode(if diags.has_errors() { &state } else { &read }, &ty);
            }
        }
        Ok(Response::new(pb::read_resource::Response {
            new_state,
            diagnostics: diags.into_proto(),
            private: request.private,
            ..Default::default()
        }))
    }

    async fn plan_resource_change(
        &self,
        request: Request<pb::plan_resource_change::Request>,
    ) -> Result<Response<pb::plan_resource_change::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        let mut response = pb::plan_resource_change::Response {
            planned_private: request.prior_private.clone(),
            ..Default::default()
        };
        if let (Some(resource), Some(ctx)) = (self.resource(&request.type_name, &mut diags), self.ctx(&mut diags)) {
            let schema = resource.schema();
            let ty = schema.value_type();
            let prior = decode(request.prior_state.as_ref(), &ty, "prior state", &mut diags);
            let proposed = decode(
                request.proposed_new_state.as_ref(),
                &ty,
                "proposed new state",
                &mut diags,
            );
            let config = decode(request.config.as_ref(), &ty, "configuration", &mut diags);
            if let (Some(prior), Some(mut planned), Some(config)) = (prior, proposed, config) {
                if planned.is_null() {
                    if !prior.is_null() {
                        resource.plan_destroy(&ctx, &prior, &mut diags).await;
                    }
                } else {
                    plan_block(&schema.block, &prior, &config, &mut planned);
                    let extra = if prior.is_null() && crate::run::is_destroy() {
                        // A destroy run creates nothing: what would stop the create must not
                        // stop the destroy (see `run`).
                        let mut create = Diagnostics::default();
                        resource.plan(&ctx, &prior, &mut planned, &mut create).await;
                        diags.extend(create.into_warnings());
                        Vec::new()
                    } else {
                        resource.plan(&ctx, &prior, &mut planned, &mut diags).await
                    };
                    let mut replace = replacements(&schema.block, &prior, &planned);
                    for path in extra {
                        if !replace.contains(&path) {
                            replace.push(path);
                        }
                    }
                    response.requires_replace = replace.iter().map(AttributePath::to_proto).collect();
                }
                response.planned_state = encode(&planned, &ty);
            }
        }
        response.diagnostics = diags.into_proto();
        Ok(Response::new(response))
    }

    async fn apply_resource_change(
        &self,
        request: Request<pb::apply_resource_change::Request>,
    ) -> Result<Response<pb::apply_resource_change::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        let mut response = pb::apply_resource_change::Response {
            private: request.planned_private.clone(),
            ..Default::default()
        };
        if let (Some(resource), Some(ctx)) = (self.resource(&request.type_name, &mut diags), self.ctx(&mut diags)) {
            let schema = resource.schema();
            let ty = schema.value_type();
            // Every change is made under the store's apply lease; without it, nothing is.
            if !ctx.configured.lease.hold(&mut diags).await {
                response.new_state = request.prior_state.clone();
                response.diagnostics = diags.into_proto();
                return Ok(Response::new(response));
            }
            let prior = decode(request.prior_state.as_ref(), &ty, "prior state", &mut diags);
            let planned = decode(request.planned_state.as_ref(), &ty, "planned state", &mut diags);
            let config = decode(request.config.as_ref(), &ty, "configuration", &mut diags);
            if let (Some(prior), Some(planned), Some(config)) = (prior, planned, config) {
                let mut new_state = if planned.is_null() {
                    resource.delete(&ctx, &prior, &mut diags).await;
                    // A failed delete keeps the resource in state so it is not forgotten.
                    if diags.has_errors() {
                        prior
                    } else {
                        Value::Null
                    }
                } else if prior.is_null() {
                    resource.create(&ctx, &planned, &config, &mut diags).await
                } else {
                    resource.update(&ctx, &prior, &planned, &config, &mut diags).await
                };
                null_write_only(&schema.block, &mut new_state);
                response.new_state = encode(&new_state, &ty);
            }
        }
        response.diagnostics = diags.into_proto();
        Ok(Response::new(response))
    }

    async fn import_resource_state(
        &self,
        request: Request<pb::import_resource_state::Request>,
    ) -> Result<Response<pb::import_resource_state::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        let mut imported_resources = Vec::new();
        if let (Some(resource), Some(ctx)) = (self.resource(&request.type_name, &mut diags), self.ctx(&mut diags)) {
            let state = resource.import(&ctx, &request.id, &mut diags).await;
            if !diags.has_errors() {
                imported_resources.push(pb::import_resource_state::ImportedResource {
                    type_name: request.type_name.clone(),
                    state: encode(&state, &resource.schema().value_type()),
                    ..Default::default()
                });
            }
        }
        Ok(Response::new(pb::import_resource_state::Response {
            imported_resources,
            diagnostics: diags.into_proto(),
            ..Default::default()
        }))
    }

    async fn get_functions(
        &self,
        _: Request<pb::get_functions::Request>,
    ) -> Result<Response<pb::get_functions::Response>, Status> {
        Ok(Response::new(pb::get_functions::Response {
            functions: self
                .functions
                .iter()
                .map(|(name, f)| ((*name).to_owned(), f.to_proto()))
                .collect(),
            diagnostics: Vec::new(),
        }))
    }

    async fn call_function(
        &self,
        request: Request<pb::call_function::Request>,
    ) -> Result<Response<pb::call_function::Response>, Status> {
        let request = request.into_inner();
        let failure = |text: String, argument: Option<usize>| {
            Ok(Response::new(pb::call_function::Response {
                result: None,
                error: Some(pb::FunctionError {
                    text,
                    function_argument: argument.and_then(|a| i64::try_from(a).ok()),
                }),
            }))
        };
        let Some(function) = self.functions.get(request.name.as_str()) else {
            return failure(format!("this provider has no function {:?}", request.name), None);
        };
        let parameters = function.parameters();
        if request.arguments.len() != parameters.len() {
            return failure(
                format!(
                    "{} takes {} arguments, got {}",
                    request.name,
                    parameters.len(),
                    request.arguments.len()
                ),
                None,
            );
        }
        let mut arguments = Vec::with_capacity(parameters.len());
        for (index, (argument, parameter)) in request.arguments.iter().zip(&parameters).enumerate() {
            let mut diags = Diagnostics::default();
            match decode(Some(argument), &parameter.ty, parameter.name, &mut diags) {
                Some(value) if value.is_fully_known() && !value.is_null() => arguments.push(value),
                Some(_) => return failure(format!("{} must be known and not null", parameter.name), Some(index)),
                None => return failure(format!("{} could not be decoded", parameter.name), Some(index)),
            }
        }
        match function.call(&arguments) {
            Ok(value) => Ok(Response::new(pb::call_function::Response {
                result: encode(&value, &function.return_type()),
                error: None,
            })),
            Err(e) => failure(e.message, e.argument),
        }
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<pb::validate_data_resource_config::Request>,
    ) -> Result<Response<pb::validate_data_resource_config::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        if let Some(source) = self.data_source(&request.type_name, &mut diags) {
            let schema = source.schema();
            if let Some(config) = decode(
                request.config.as_ref(),
                &schema.value_type(),
                "configuration",
                &mut diags,
            ) {
                validate_block(&schema.block, &config, &AttributePath::root(), &mut diags);
            }
        }
        Ok(Response::new(pb::validate_data_resource_config::Response {
            diagnostics: diags.into_proto(),
        }))
    }

    async fn read_data_source(
        &self,
        request: Request<pb::read_data_source::Request>,
    ) -> Result<Response<pb::read_data_source::Response>, Status> {
        let request = request.into_inner();
        let mut diags = Diagnostics::default();
        let mut state = None;
        if let (Some(source), Some(ctx)) = (self.data_source(&request.type_name, &mut diags), self.ctx(&mut diags)) {
            let ty = source.schema().value_type();
            if let Some(config) = decode(request.config.as_ref(), &ty, "configuration", &mut diags) {
                let value = source.read(&ctx, &config, &mut diags).await;
                if !diags.has_errors() {
                    state = encode(&value, &ty);
                }
            }
        }
        Ok(Response::new(pb::read_data_source::Response {
            state,
            diagnostics: diags.into_proto(),
            deferred: None,
        }))
    }

    async fn stop_provider(
        &self,
        _: Request<pb::stop_provider::Request>,
    ) -> Result<Response<pb::stop_provider::Response>, Status> {
        log::info("Terraform asked the provider to stop: cancelling in-flight operations");
        self.stop.lock().unwrap_or_else(PoisonError::into_inner).cancel();
        Ok(Response::new(pb::stop_provider::Response::default()))
    }
}

/// Brings stored state to the current schema version.
fn upgrade(
    resource: &dyn AnyResource,
    version: i64,
    raw: Option<&pb::RawState>,
    diags: &mut Diagnostics,
) -> Option<Value> {
    let current = resource.schema().version;
    let Some(raw) = raw.filter(|raw| !raw.json.is_empty()) else {
        diags.error(
            "Unsupported state format",
            "The stored state has no JSON form (only the legacy flatmap), which this provider never wrote. Remove the resource from state and import it.",
        );
        return None;
    };
    let json: serde_json::Value = match serde_json::from_slice(&raw.json) {
        Ok(json) => json,
        Err(e) => {
            diags.error(
                "Malformed stored state",
                format!("The stored state is not valid JSON: {e}."),
            );
            return None;
        }
    };
    let json = if version == current {
        json
    } else if version > current {
        diags.error(
            "State written by a newer provider",
            format!(
                "This {} was stored by a provider with schema version {version}, newer than this provider's {current}. Upgrade the provider instead of downgrading it.",
                resource.type_name()
            ),
        );
        return None;
    } else {
        match resource.upgrade_state(version, json) {
            Ok(json) => json,
            Err(message) => {
                diags.error("Cannot upgrade stored state", message);
                return None;
            }
        }
    };
    let ty = resource.schema().value_type();
    match Value::from_json(&json, &ty, &AttributePath::root()) {
        Ok(value) => Some(value),
        Err(e) => {
            diags.error_at(e.path, "Malformed stored state", e.message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::schema::{Attribute, Block};

    crate::model! {
        /// The test resource's model.
        struct VersionedModel {
            id: crate::framework::model::Tf<String>,
            size_mib: crate::framework::model::Tf<i64>,
        }
    }

    /// A resource at schema version 2 whose version 1 called `size` what is now `size_mib`.
    struct Versioned(Schema);

    #[async_trait::async_trait]
    impl crate::resource::Resource for Versioned {
        type Model = VersionedModel;

        fn type_name(&self) -> &'static str {
            "test_versioned"
        }
        fn schema(&self) -> &Schema {
            &self.0
        }
        async fn create(
            &self,
            _: &Ctx,
            planned: &VersionedModel,
            _: &VersionedModel,
            _: &mut Diagnostics,
        ) -> Option<VersionedModel> {
            Some(planned.clone())
        }
        async fn read(&self, _: &Ctx, state: &VersionedModel, _: &mut Diagnostics) -> Option<VersionedModel> {
            Some(state.clone())
        }
        async fn update(
            &self,
            _: &Ctx,
            _: &VersionedModel,
            planned: &VersionedModel,
            _: &VersionedModel,
            _: &mut Diagnostics,
        ) -> VersionedModel {
            planned.clone()
        }
        async fn delete(&self, _: &Ctx, _: &VersionedModel, _: &mut Diagnostics) {}
        async fn import(&self, _: &Ctx, _: &str, _: &mut Diagnostics) -> Option<VersionedModel> {
            None
        }
        fn upgrade_state(&self, from: i64, mut state: serde_json::Value) -> Result<serde_json::Value, String> {
            if from != 1 {
                return Err(format!("no upgrade from version {from}"));
            }
            let size = state.as_object_mut().and_then(|m| m.remove("size")).unwrap_or_default();
            state["size_mib"] = size;
            Ok(state)
        }
    }

    fn versioned() -> crate::resource::Typed<Versioned> {
        crate::resource::Typed(Versioned(Schema {
            version: 2,
            block: Block::new(vec![
                Attribute::computed("id", Type::String),
                Attribute::required("size_mib", Type::Number),
            ]),
        }))
    }

    fn raw(json: &str) -> pb::RawState {
        pb::RawState {
            json: json.as_bytes().to_vec(),
            flatmap: Default::default(),
        }
    }

    #[test]
    fn stored_state_is_upgraded_by_schema_version() {
        let resource = versioned();
        let mut diags = Diagnostics::default();
        let upgraded = upgrade(&resource, 1, Some(&raw(r#"{"id":"x","size":64}"#)), &mut diags).unwrap();
        assert_eq!(upgraded.get("size_mib").as_i64(), Some(64));
        let current = upgrade(&resource, 2, Some(&raw(r#"{"id":"x","size_mib":8}"#)), &mut diags).unwrap();
        assert_eq!(current.get("size_mib").as_i64(), Some(8));
        assert!(diags.as_slice().is_empty());

        assert!(upgrade(&resource, 3, Some(&raw("{}")), &mut diags).is_none());
        assert!(diags.as_slice()[0].summary.contains("newer provider"));
        let mut diags = Diagnostics::default();
        assert!(upgrade(&resource, 0, Some(&raw("{}")), &mut diags).is_none());
        assert!(diags.as_slice()[0].detail.contains("no upgrade from version 0"));
        let mut diags = Diagnostics::default();
        assert!(upgrade(&resource, 2, Some(&raw("{not json")), &mut diags).is_none());
        assert_eq!(diags.as_slice()[0].summary, "Malformed stored state");
    }
}
