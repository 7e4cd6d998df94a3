//! The schema-driven parts of validation and planning, applied before a resource's own logic.

use super::diag::Diagnostics;
use super::modifiers::ModifyRequest;
use super::path::AttributePath;
use super::schema::{Block, NestedBlock, Nesting};
use super::value::Value;

/// Runs every attribute's validators over the known, non-null values of `config`.
pub fn validate_block(block: &Block, config: &Value, path: &AttributePath, diags: &mut Diagnostics) {
    for attribute in &block.attributes {
        let value = config.get(attribute.name);
        if value.is_null() || !value.is_fully_known() {
            continue;
        }
        let at = path.attr(attribute.name);
        for validator in &attribute.validators {
            if let Err(message) = validator.validate(value) {
                diags.error_at(at.clone(), format!("Invalid {}", at), format!("{at} {message}."));
            }
        }
    }
    for nested in &block.blocks {
        for_each_block(
            nested,
            config.get(nested.name),
            &path.attr(nested.name),
            |element, at| {
                validate_block(&nested.block, element, at, diags);
            },
        );
    }
}

fn for_each_block(
    nested: &NestedBlock,
    value: &Value,
    path: &AttributePath,
    mut f: impl FnMut(&Value, &AttributePath),
) {
    match nested.nesting {
        Nesting::Single if !value.is_null() && !value.is_unknown() => f(value, path),
        Nesting::Single => {}
        Nesting::List => {
            for (i, element) in value.as_list().iter().enumerate() {
                f(element, &path.index(i));
            }
        }
        // A set's elements have no position the user wrote: diagnostics name the block type.
        Nesting::Set => {
            for element in value.as_list() {
                f(element, path);
            }
        }
    }
}

/// Applies defaults, marks computed values unknown where they may change, and runs the
/// attributes' plan modifiers.
///
/// `proposed` is Terraform's proposed new state (configuration merged with prior computed
/// values); it becomes the planned state. A computed value the configuration leaves alone is
/// kept when nothing changes and unknown otherwise, unless a modifier says better.
pub fn plan_block(block: &Block, prior: &Value, config: &Value, proposed: &mut Value) {
    null_write_only(block, proposed);
    apply_defaults(block, config, proposed);
    let creating = prior.is_null();
    let changing = creating || proposed != prior;
    let before = proposed.clone();
    for attribute in block.attributes.iter().filter(|a| a.is_computed()) {
        if !config.get(attribute.name).is_null() || attribute.default.is_some() {
            continue;
        }
        let mut value = if changing {
            Value::Unknown
        } else {
            prior.get(attribute.name).clone()
        };
        let request = ModifyRequest {
            prior_resource: prior,
            planned_resource: &before,
            prior: prior.get(attribute.name),
            config: config.get(attribute.name),
        };
        for modifier in &attribute.modifiers {
            modifier.modify(&request, &mut value);
        }
        proposed.set(attribute.name, value);
    }
}

/// The paths whose planned change forces replacement (attributes and blocks marked
/// `RequiresReplace`); none on create.
#[must_use]
pub fn replacements(block: &Block, prior: &Value, planned: &Value) -> Vec<AttributePath> {
    let mut replace = Vec::new();
    if !prior.is_null() {
        collect_replacements(block, prior, planned, &AttributePath::root(), &mut replace);
    }
    replace
}

fn apply_defaults(block: &Block, config: &Value, proposed: &mut Value) {
    for attribute in &block.attributes {
        if let Some(default) = &attribute.default {
            if config.get(attribute.name).is_null() {
                proposed.set(attribute.name, default.clone());
            }
        }
    }
    for nested in &block.blocks {
        let config_value = config.get(nested.name);
        let mut value = proposed.get(nested.name).clone();
        match (nested.nesting, &mut value) {
            (Nesting::Single, v) if !v.is_null() && !v.is_unknown() => apply_defaults(&nested.block, config_value, v),
            (Nesting::List, Value::List(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    apply_defaults(
                        &nested.block,
                        config_value.as_list().get(i).unwrap_or(&Value::Null),
                        item,
                    );
                }
            }
            _ => continue,
        }
        proposed.set(nested.name, value);
    }
}

fn collect_replacements(
    block: &Block,
    prior: &Value,
    planned: &Value,
    path: &AttributePath,
    out: &mut Vec<AttributePath>,
) {
    for attribute in &block.attributes {
        let (before, after) = (prior.get(attribute.name), planned.get(attribute.name));
        if attribute.modifiers.iter().any(|m| m.requires_replace(before, after)) {
            out.push(path.attr(attribute.name));
        }
    }
    for nested in &block.blocks {
        let (before, after) = (prior.get(nested.name), planned.get(nested.name));
        if nested.modifiers.iter().any(|m| m.requires_replace(before, after)) {
            out.push(path.attr(nested.name));
        } else if nested.nesting == Nesting::Single {
            collect_replacements(&nested.block, before, after, &path.attr(nested.name), out);
        }
    }
}

/// Nulls every write-only attribute: their values come from configuration and are never
/// planned or stored.
pub fn null_write_only(block: &Block, value: &mut Value) {
    if value.is_null() || value.is_unknown() {
        return;
    }
    for attribute in block.attributes.iter().filter(|a| a.write_only) {
        value.set(attribute.name, Value::Null);
    }
    for nested in &block.blocks {
        let mut element = value.get(nested.name).clone();
        match &mut element {
            Value::List(items) => items.iter_mut().for_each(|item| null_write_only(&nested.block, item)),
            single @ Value::Map(_) => null_write_only(&nested.block, single),
            _ => continue,
        }
        value.set(nested.name, element);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::modifiers::{requires_replace, use_state_for_unknown};
    use crate::framework::schema::{Attribute, NestedBlock};
    use crate::framework::types::Type;
    use crate::framework::validators::one_of;

    fn block() -> Block {
        Block::new(vec![
            Attribute::computed("id", Type::String).modify(use_state_for_unknown()),
            Attribute::required("name", Type::String).modify(requires_replace()),
            Attribute::optional("note", Type::String),
            Attribute::with_default("mode", Type::String, Value::string("fast")).validate(one_of(&["fast", "slow"])),
            Attribute::computed("version", Type::Number),
            Attribute::optional("secret", Type::String).write_only(),
        ])
        .with_blocks(vec![NestedBlock::single(
            "kernel",
            Block::new(vec![
                Attribute::required("sha256", Type::String).modify(requires_replace())
            ]),
        )])
    }

    fn state(name: &str, note: &str) -> Value {
        Value::object([
            ("id", Value::string("x-1")),
            ("name", Value::string(name)),
            ("note", Value::string(note)),
            ("mode", Value::string("fast")),
            ("version", Value::int(1)),
            ("secret", Value::Null),
            ("kernel", Value::object([("sha256", Value::string("aa"))])),
        ])
    }

    fn config_of(state: &Value) -> Value {
        let mut config = state.clone();
        for computed in ["id", "version", "mode"] {
            config.set(computed, Value::Null);
        }
        config
    }

    #[test]
    fn create_plans_computed_values_unknown_and_applies_defaults() {
        let config = config_of(&state("a", "n"));
        let mut proposed = config.clone();
        plan_block(&block(), &Value::Null, &config, &mut proposed);
        assert!(replacements(&block(), &Value::Null, &proposed).is_empty());
        assert_eq!(proposed.get("id"), &Value::Unknown);
        assert_eq!(proposed.get("version"), &Value::Unknown);
        assert_eq!(proposed.get("mode"), &Value::string("fast"));
    }

    #[test]
    fn no_change_keeps_every_prior_value() {
        let prior = state("a", "n");
        let config = config_of(&prior);
        let mut proposed = prior.clone();
        plan_block(&block(), &prior, &config, &mut proposed);
        assert!(replacements(&block(), &prior, &proposed).is_empty());
        assert_eq!(proposed, prior);
    }

    #[test]
    fn in_place_change_keeps_stable_ids_and_recomputes_the_rest() {
        let prior = state("a", "n");
        let config = config_of(&state("a", "changed"));
        let mut proposed = prior.clone();
        proposed.set("note", Value::string("changed"));
        plan_block(&block(), &prior, &config, &mut proposed);
        assert!(replacements(&block(), &prior, &proposed).is_empty());
        assert_eq!(proposed.get("id"), &Value::string("x-1"));
        assert_eq!(proposed.get("version"), &Value::Unknown);
    }

    #[test]
    fn replacement_paths_name_the_attribute_and_nested_attribute() {
        let prior = state("a", "n");
        let mut proposed = prior.clone();
        proposed.set("name", Value::string("b"));
        proposed.set("kernel", Value::object([("sha256", Value::string("bb"))]));
        let config = config_of(&proposed);
        plan_block(&block(), &prior, &config, &mut proposed);
        let replace = replacements(&block(), &prior, &proposed);
        let names: Vec<String> = replace.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["name", "kernel.sha256"]);
    }

    #[test]
    fn validators_report_the_attribute_path() {
        let mut diags = Diagnostics::default();
        let mut config = config_of(&state("a", "n"));
        config.set("mode", Value::string("warp"));
        validate_block(&block(), &config, &AttributePath::root(), &mut diags);
        assert_eq!(diags.as_slice().len(), 1);
        assert_eq!(diags.as_slice()[0].path.as_ref().unwrap().to_string(), "mode");
        assert!(diags.as_slice()[0].detail.contains("\"fast\", \"slow\""));
    }

    #[test]
    fn write_only_values_never_reach_state() {
        let mut value = state("a", "n");
        value.set("secret", Value::string("hunter2"));
        null_write_only(&block(), &mut value);
        assert!(value.get("secret").is_null());
    }
}
