//! Provider-defined functions (`provider::safebox::NAME(...)`): pure functions of their
//! arguments, declared with typed parameters and a return type.

use safebox_proto::tfplugin6 as pb;

use super::types::Type;
use super::value::Value;

/// One positional parameter.
pub struct Parameter {
    /// Its name, as documentation shows it.
    pub name: &'static str,
    /// Its type.
    pub ty: Type,
    /// What it is.
    pub description: &'static str,
}

/// Why a call failed; `argument` names the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionError {
    /// What was wrong and how to fix it.
    pub message: String,
    /// The zero-based index of the argument at fault.
    pub argument: Option<usize>,
}

impl FunctionError {
    /// An error about argument `index`.
    #[must_use]
    pub fn argument(index: usize, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            argument: Some(index),
        }
    }
}

/// A provider-defined function.
pub trait Function: Send + Sync {
    /// The name after `provider::safebox::`.
    fn name(&self) -> &'static str;
    /// One line.
    fn summary(&self) -> &'static str;
    /// Markdown documentation.
    fn description(&self) -> &'static str;
    /// The parameters, in order.
    fn parameters(&self) -> Vec<Parameter>;
    /// The result type.
    fn return_type(&self) -> Type;
    /// Calls the function on known, non-null arguments.
    ///
    /// # Errors
    /// A [`FunctionError`] naming the argument at fault.
    fn call(&self, arguments: &[Value]) -> Result<Value, FunctionError>;

    /// The protocol declaration.
    fn to_proto(&self) -> pb::Function {
        pb::Function {
            parameters: self
                .parameters()
                .into_iter()
                .map(|p| pb::function::Parameter {
                    name: p.name.to_owned(),
                    r#type: p.ty.to_json().to_string().into_bytes(),
                    allow_null_value: false,
                    allow_unknown_values: false,
                    description: p.description.to_owned(),
                    description_kind: pb::StringKind::Markdown as i32,
                })
                .collect(),
            variadic_parameter: None,
            r#return: Some(pb::function::Return {
                r#type: self.return_type().to_json().to_string().into_bytes(),
            }),
            summary: self.summary().to_owned(),
            description: self.description().to_owned(),
            description_kind: pb::StringKind::Markdown as i32,
            deprecation_message: String::new(),
        }
    }
}
