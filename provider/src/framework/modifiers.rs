//! Plan modifiers: small, described objects that say how planning treats one attribute or
//! nested block beyond what the schema's mode implies (terraform-plugin-framework's
//! `planmodifier`). The generic planning in [`super::plan`] runs them: [`PlanModifier::modify`]
//! before the resource's own plan, [`PlanModifier::requires_replace`] after it.

use std::sync::Arc;

use super::value::Value;

/// What a modifier sees of the attribute it is attached to.
#[derive(Debug)]
pub struct ModifyRequest<'a> {
    /// The whole resource's prior state; null on create.
    pub prior_resource: &'a Value,
    /// The whole resource's planned state before modifiers ran.
    pub planned_resource: &'a Value,
    /// The attribute's prior value; null on create.
    pub prior: &'a Value,
    /// The attribute's configured value.
    pub config: &'a Value,
}

/// How planning treats one attribute or block.
pub trait PlanModifier: Send + Sync {
    /// What it does, in Markdown, for docs and editors.
    fn description(&self) -> &'static str;

    /// Adjusts the attribute's planned value (`planned`) before the resource plans.
    fn modify(&self, _request: &ModifyRequest<'_>, _planned: &mut Value) {}

    /// Whether planning `planned` where `prior` was replaces the resource; asked after the
    /// resource planned.
    fn requires_replace(&self, _prior: &Value, _planned: &Value) -> bool {
        false
    }
}

/// A shared plan modifier.
pub type Modifier = Arc<dyn PlanModifier>;

struct RequiresReplace;

impl PlanModifier for RequiresReplace {
    fn description(&self) -> &'static str {
        "Changing this replaces the resource."
    }

    fn requires_replace(&self, prior: &Value, planned: &Value) -> bool {
        prior != planned
    }
}

/// A change of the value replaces the resource.
#[must_use]
pub fn requires_replace() -> Modifier {
    Arc::new(RequiresReplace)
}

struct UseStateForUnknown;

impl PlanModifier for UseStateForUnknown {
    fn description(&self) -> &'static str {
        "Once known, the value does not change until the resource is replaced."
    }

    fn modify(&self, request: &ModifyRequest<'_>, planned: &mut Value) {
        if planned.is_unknown() && !request.prior_resource.is_null() {
            *planned = request.prior.clone();
        }
    }
}

/// A computed value that does not change once known: the prior value (null included) is
/// planned instead of "known after apply" when something else changes.
#[must_use]
pub fn use_state_for_unknown() -> Modifier {
    Arc::new(UseStateForUnknown)
}

struct UseStateWhenUnchanged(&'static [&'static [&'static str]]);

impl PlanModifier for UseStateWhenUnchanged {
    fn description(&self) -> &'static str {
        "Recomputed only when an input it derives from changes."
    }

    fn modify(&self, request: &ModifyRequest<'_>, planned: &mut Value) {
        let (prior, now) = (request.prior_resource, request.planned_resource);
        let unchanged = self
            .0
            .iter()
            .flat_map(|names| names.iter())
            .all(|name| prior.get(name) == now.get(name));
        if planned.is_unknown() && !prior.is_null() && unchanged {
            *planned = request.prior.clone();
        }
    }
}

/// A computed value derived from the attributes `inputs` only (given as lists to join): the
/// prior value is planned while none of them changes.
#[must_use]
pub fn use_state_when_unchanged(inputs: &'static [&'static [&'static str]]) -> Modifier {
    Arc::new(UseStateWhenUnchanged(inputs))
}
