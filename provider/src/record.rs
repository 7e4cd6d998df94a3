//! Resource state kept as backend records, so that refresh and import find what apply made.
//!
//! A record is the resource's state as apply wrote it. Refresh compares it with Terraform's
//! state ([`load_checked`]): the two are written together, so a difference means one was
//! changed outside Terraform, and the plan fails there, naming the attribute, before anything
//! is replaced or destroyed on the strength of either.
//!
//! Records are written on a condition ([`safebox::store::Store::put_record`]): a create only
//! if no record exists ([`create`]), an update only if the record is still the one the prior
//! state describes and still at the version just read ([`replace`]). Two runs sharing a store
//! never overwrite each other's record; the one that comes second is told to plan again.

use safebox::cloud::{check_record_id, CloudError, RecordKind};
use safebox::store::objects::Version;

use crate::framework::diag::Diagnostics;
use crate::framework::model::Model;
use crate::framework::path::AttributePath;
use crate::framework::schema::Schema;
use crate::framework::value::Value;
use crate::resource::Ctx;

/// Stores `state` (fully known) as the new record `kind`/`id`; a record of that id must not
/// exist. Reports failures in `diags`.
pub async fn create<M: Model>(ctx: &Ctx, kind: RecordKind, id: &str, state: &M, diags: &mut Diagnostics) {
    write(ctx, (kind, id), state, None, diags).await;
}

async fn write<M: Model>(
    ctx: &Ctx,
    (kind, id): (RecordKind, &str),
    state: &M,
    expected: Option<&Version>,
    diags: &mut Diagnostics,
) {
    let body = state.to_value().to_json().to_string();
    if let Err(e) = ctx
        .configured
        .store
        .put_record(kind, id, body.as_bytes(), expected)
        .await
    {
        report(diags, &e, "Cannot save the resource");
    }
}

/// What a resource's records are: their kind, the schema they are states of, and the `live`
/// attributes that refresh recomputes (a record keeps what apply saw of them).
#[derive(Clone, Copy)]
pub struct Records<'a> {
    /// The kind.
    pub kind: RecordKind,
    /// The resource's schema.
    pub schema: &'a Schema,
    /// The attributes refresh recomputes.
    pub live: &'a [&'a str],
}

/// Replaces the record `id` of `prior` (an update) with `state`: only if the record is still
/// what `prior`, Terraform's state, says it is, and only if nobody writes it between this read
/// and the write. Reports failures in `diags` (nothing is written then).
pub async fn replace<M: Model>(
    ctx: &Ctx,
    records: Records<'_>,
    id: &str,
    prior: &M,
    state: &M,
    diags: &mut Diagnostics,
) {
    let Some((_, version)) = load_versioned::<M>(ctx, records, id, prior, diags).await else {
        if !diags.has_errors() {
            diags.error(
                "Cannot save the resource",
                format!(
                    "The record {}/{id} is gone from {}: another run deleted it. Run terraform plan again.",
                    records.kind,
                    ctx.configured.store.location()
                ),
            );
        }
        return;
    };
    write(ctx, (records.kind, id), state, Some(&version), diags).await;
}

/// Loads the record `kind`/`id` as a state of `schema`; `None` when there is none (or on an
/// error, which is reported in `diags`).
pub async fn load<M: Model>(
    ctx: &Ctx,
    kind: RecordKind,
    id: &str,
    schema: &Schema,
    diags: &mut Diagnostics,
) -> Option<M> {
    Some(load_value(ctx, kind, id, schema, diags).await?.1)
}

/// The record `kind`/`id` as a value and as its model, with the version read.
async fn load_value<M: Model>(
    ctx: &Ctx,
    kind: RecordKind,
    id: &str,
    schema: &Schema,
    diags: &mut Diagnostics,
) -> Option<(Value, M, Version)> {
    let stored = match ctx.configured.store.get_record(kind, id).await {
        Ok(stored) => stored?,
        Err(e) => {
            report(diags, &e, "Cannot read the resource");
            return None;
        }
    };
    let version = stored.version;
    let decoded = serde_json::from_slice::<serde_json::Value>(&stored.body)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            Value::from_json(&json, &schema.value_type(), &AttributePath::root())
                .map_err(|e| format!("{}: {}", e.path, e.message))
        })
        .and_then(|value| {
            let model = M::from_value(&value, &AttributePath::root()).map_err(|e| e.to_string())?;
            Ok((value, model, version))
        });
    match decoded {
        Ok(state) => Some(state),
        Err(reason) => {
            diags.error(
                "Unreadable resource record",
                format!(
                    "The record {kind}/{id} in {} is damaged ({reason}). Restore it from a backup, or remove the resource from state (terraform state rm) and create it again.",
                    ctx.configured.store.location()
                ),
            );
            None
        }
    }
}

/// Loads the record `kind`/`id` for refresh and checks it against `state`, Terraform's view of
/// the same resource: every attribute but the `live` ones (those refresh recomputes) that
/// `state` knows must be equal. A difference is an error naming the attribute; `None` then.
pub async fn load_checked<M: Model>(
    ctx: &Ctx,
    records: Records<'_>,
    id: &str,
    state: &M,
    diags: &mut Diagnostics,
) -> Option<M> {
    load_versioned(ctx, records, id, state, diags)
        .await
        .map(|(model, _)| model)
}

/// [`load_checked`], with the version of the record read.
async fn load_versioned<M: Model>(
    ctx: &Ctx,
    Records { kind, schema, live }: Records<'_>,
    id: &str,
    state: &M,
    diags: &mut Diagnostics,
) -> Option<(M, Version)> {
    let (record, model, version) = load_value::<M>(ctx, kind, id, schema, diags).await?;
    let state = state.to_value();
    let attributes = schema.block.attributes.iter().map(|a| (a.name, a.ty.clone()));
    let blocks = schema.block.blocks.iter().map(|b| (b.name, b.value_type()));
    for (attribute, ty) in attributes.chain(blocks) {
        let (known, stored) = (state.get(attribute), record.get(attribute));
        if live.contains(&attribute) || known.is_null() || !known.is_fully_known() || known.same_as(stored, &ty) {
            continue;
        }
        diags.error_at(
            AttributePath::attr_root(attribute),
            "Record and state disagree",
            format!(
                "The record {kind}/{id} in {} holds {attribute} = {}, but Terraform's state holds {}. One of them was changed outside Terraform, so neither is trusted and nothing was changed. Restore the record from a backup (or the state from its history), then plan again.",
                ctx.configured.store.location(),
                brief(stored),
                brief(known)
            ),
        );
        return None;
    }
    Some((model, version))
}

/// A value for a message, cut to a readable length.
fn brief(value: &Value) -> String {
    let text = value.to_json().to_string();
    if text.len() > 160 {
        format!(
            "{}…",
            &text[..text.char_indices().nth(157).map_or(text.len(), |(i, _)| i)]
        )
    } else {
        text
    }
}

/// The record `kind`/`id` as plain JSON, for readers that need one field of it (a policy's
/// document) and not a resource's schema; `None` when there is none.
///
/// # Errors
/// The backend's error, or a sentence saying the record is not JSON.
pub async fn raw(ctx: &Ctx, kind: RecordKind, id: &str) -> Result<Option<serde_json::Value>, String> {
    let Some(stored) = ctx
        .configured
        .store
        .get_record(kind, id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&stored.body)
        .map(Some)
        .map_err(|e| format!("the backend's record {kind}/{id} is not JSON ({e})"))
}

/// An in-place update of the resource `id` that changes nothing but the stored record (every
/// governed input of the resource replaces it): stores `planned` ([`replace`]) and returns it,
/// or `prior` on failure.
pub async fn store_update<M: Model + Clone>(
    ctx: &Ctx,
    (records, id): (Records<'_>, &str),
    prior: &M,
    planned: &M,
    diags: &mut Diagnostics,
) -> M {
    replace(ctx, records, id, prior, planned, diags).await;
    if diags.has_errors() {
        prior.clone()
    } else {
        planned.clone()
    }
}

/// Removes the record `kind`/`id`.
pub async fn remove(ctx: &Ctx, kind: RecordKind, id: &str, diags: &mut Diagnostics) {
    if let Err(e) = ctx.configured.store.delete_record(kind, id).await {
        report(diags, &e, "Cannot delete the resource");
    }
}

/// The state of an imported record, with a clear error when the id is malformed or unknown.
pub async fn import<M: Model>(
    ctx: &Ctx,
    kind: RecordKind,
    id: &str,
    schema: &Schema,
    diags: &mut Diagnostics,
) -> Option<M> {
    if let Err(e) = check_record_id(kind, id) {
        report(diags, &e, "Invalid import id");
        return None;
    }
    match load(ctx, kind, id, schema, diags).await {
        Some(state) => Some(state),
        None => {
            if !diags.has_errors() {
                diags.error(
                    "Nothing to import",
                    format!(
                        "{} holds no {kind} record with id {id:?}. Check the id (shown as `id` in the state of the workspace that created it) and the provider's state_dir.",
                        ctx.configured.store.location()
                    ),
                );
            }
            None
        }
    }
}

fn report(diags: &mut Diagnostics, e: &CloudError, summary: &str) {
    diags.error(summary, format!("{e}."));
}
