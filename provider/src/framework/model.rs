//! Typed resource models: a resource's value as a Rust struct, converted from and to
//! [`Value`] in one place.
//!
//! Every attribute may be null or, while planning, unknown; [`Tf`] says which, so that no code
//! reads a default where the value is not known yet. Nested blocks that repeat are `Vec`s of
//! their own models (Terraform sends none as an empty list); a single block, an object
//! attribute or a block that may be absent is a [`Tf`] of its model. The [`model!`] macro writes
//! the struct and its conversions from a field list whose names are the attribute names, so an
//! attribute is spelled once in the schema and once in its model, and a unit test
//! ([`check_model`]) proves that the two agree, names and types, at every depth.

use std::collections::BTreeMap;

use super::path::AttributePath;
use super::value::Value;

/// A Terraform value of type `T`: null, not known until apply, or known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Tf<T> {
    /// No value.
    #[default]
    Null,
    /// Known only after apply.
    Unknown,
    /// A known value.
    Known(T),
}

impl<T> Tf<T> {
    /// The value, when known.
    #[must_use]
    pub fn known(&self) -> Option<&T> {
        match self {
            Self::Known(value) => Some(value),
            _ => None,
        }
    }

    /// The value, when known.
    #[must_use]
    pub fn into_known(self) -> Option<T> {
        match self {
            Self::Known(value) => Some(value),
            _ => None,
        }
    }

    /// Whether this is null.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// Whether this is unknown.
    #[must_use]
    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::Unknown)
    }

    /// A mutable reference to the value, when known.
    pub fn known_mut(&mut self) -> Option<&mut T> {
        match self {
            Self::Known(value) => Some(value),
            _ => None,
        }
    }
}

impl<T> From<Option<T>> for Tf<T> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Null, Self::Known)
    }
}

impl Tf<String> {
    /// The string, when known.
    #[must_use]
    pub fn as_deref(&self) -> Option<&str> {
        self.known().map(String::as_str)
    }

    /// A known string.
    #[must_use]
    pub fn string(value: impl Into<String>) -> Self {
        Self::Known(value.into())
    }
}

impl<T> Tf<Vec<T>> {
    /// The elements; none when null or unknown.
    #[must_use]
    pub fn items(&self) -> &[T] {
        self.known().map_or(&[], Vec::as_slice)
    }
}

/// A list of strings, any of which may be unknown while planning.
pub type StringList = Tf<Vec<Tf<String>>>;

/// A map of strings, any of whose values may be unknown while planning.
pub type StringMap = Tf<BTreeMap<String, Tf<String>>>;

impl StringList {
    /// A known list of known strings.
    #[must_use]
    pub fn of<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Self {
        Self::Known(items.into_iter().map(|s| Tf::Known(s.into())).collect())
    }

    /// The strings, when the list and every element are known; an empty list for null.
    #[must_use]
    pub fn strings(&self) -> Option<Vec<String>> {
        match self {
            Self::Null => Some(Vec::new()),
            Self::Unknown => None,
            Self::Known(items) => items.iter().map(|s| s.known().cloned()).collect(),
        }
    }
}

impl StringMap {
    /// A known map of known strings.
    #[must_use]
    pub fn of(items: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::Known(items.into_iter().map(|(k, v)| (k, Tf::Known(v))).collect())
    }

    /// The entries, when the map and every value are known; `None` for null too.
    #[must_use]
    pub fn entries(&self) -> Option<BTreeMap<String, String>> {
        self.known()?
            .iter()
            .map(|(k, v)| Some((k.clone(), v.known()?.clone())))
            .collect()
    }
}

/// Whether no part of `model` is unknown.
#[must_use]
pub fn fully_known<M: Model>(model: &M) -> bool {
    model.to_value().is_fully_known()
}

/// A value that does not fit its model: a provider bug, reported with the value's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ModelError {
    /// Where.
    pub path: AttributePath,
    /// What.
    pub message: String,
}

impl ModelError {
    fn new(path: &AttributePath, message: impl Into<String>) -> Self {
        Self {
            path: path.clone(),
            message: message.into(),
        }
    }
}

/// A Rust type that a Terraform value converts from and to.
pub trait Model: Sized {
    /// Reads `value`, found at `path`.
    ///
    /// # Errors
    /// A [`ModelError`] naming the first part of `value` that does not fit.
    fn from_value(value: &Value, path: &AttributePath) -> Result<Self, ModelError>;

    /// The value.
    fn to_value(&self) -> Value;
}

/// Why a value that must be known and present is not.
fn absent(value: &Value, path: &AttributePath, what: &str) -> ModelError {
    let state = match value {
        Value::Null => "null",
        Value::Unknown => "unknown",
        _ => "of another type",
    };
    ModelError::new(path, format!("expected {what}, found a value that is {state}"))
}

impl Model for String {
    fn from_value(value: &Value, path: &AttributePath) -> Result<Self, ModelError> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| absent(value, path, "a string"))
    }

    fn to_value(&self) -> Value {
        Value::string(self)
    }
}

impl Model for i64 {
    fn from_value(value: &Value, path: &AttributePath) -> Result<Self, ModelError> {
        value.as_i64().ok_or_else(|| absent(value, path, "a whole number"))
    }

    fn to_value(&self) -> Value {
        Value::int(*self)
    }
}

impl Model for bool {
    fn from_value(value: &Value, path: &AttributePath) -> Result<Self, ModelError> {
        value.as_bool().ok_or_else(|| absent(value, path, "a bool"))
    }

    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}

/// A list or set; nested blocks that repeat, of which Terraform sends none as an empty list
/// (a null reads as none too).
impl<T: Model> Model for Vec<T> {
    fn from_value(value: &Value, path: &AttributePath) -> Result<Self, ModelError> {
        match value {
            Value::Null => Ok(Vec::new()),
            Value::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| T::from_value(item, &path.index(i)))
                .collect(),
            _ => Err(absent(value, path, "a list")),
        }
    }

    fn to_value(&self) -> Value {
        Value::List(self.iter().map(Model::to_value).collect())
    }
}

/// A map.
impl<T: Model> Model for BTreeMap<String, T> {
    fn from_value(value: &Value, path: &AttributePath) -> Result<Self, ModelError> {
        match value {
            Value::Map(items) => items
                .iter()
                .map(|(key, item)| Ok((key.clone(), T::from_value(item, &path.key(key))?)))
                .collect(),
            _ => Err(absent(value, path, "a map")),
        }
    }

    fn to_value(&self) -> Value {
        Value::Map(self.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
    }
}

impl<T: Model> Model for Tf<T> {
    fn from_value(value: &Value, path: &AttributePath) -> Result<Self, ModelError> {
        Ok(match value {
            Value::Null => Self::Null,
            Value::Unknown => Self::Unknown,
            known => Self::Known(T::from_value(known, path)?),
        })
    }

    fn to_value(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Unknown => Value::Unknown,
            Self::Known(value) => value.to_value(),
        }
    }
}

/// A model of an object: its attribute names, for [`check_model`] and for models that
/// embed it.
pub trait Fields {
    /// The attribute names, in the model's order.
    fn fields() -> Vec<&'static str>;
}

/// Writes a model struct whose fields are attributes of the same names, its [`Model`]
/// conversions and its [`Fields`]. Fields after `embed` are models of attributes that several
/// resources share (the governance attributes): they read from and write to the same object.
///
/// ```ignore
/// model! {
///     /// A policy.
///     pub struct PolicyModel {
///         /// The id.
///         id: Tf<String>,
///         signer: Vec<SignerModel>,
///     }
///     embed {
///         /// The governance attributes.
///         governance: GovernanceModel,
///     }
/// }
/// ```
#[macro_export]
macro_rules! model {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
        $( embed { $( $(#[$embed_meta:meta])* $embed:ident : $embed_ty:ty ),* $(,)? } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Default)]
        $vis struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
            $( $( $(#[$embed_meta])* pub $embed: $embed_ty, )* )?
        }

        impl $crate::framework::model::Model for $name {
            fn from_value(
                value: &$crate::framework::value::Value,
                path: &$crate::framework::path::AttributePath,
            ) -> Result<Self, $crate::framework::model::ModelError> {
                if !matches!(value, $crate::framework::value::Value::Map(_)) {
                    return Err($crate::framework::model::ModelError {
                        path: path.clone(),
                        message: format!("expected an object for {}", stringify!($name)),
                    });
                }
                Ok(Self {
                    $( $field: <$ty as $crate::framework::model::Model>::from_value(
                        value.get(stringify!($field)),
                        &path.attr(stringify!($field)),
                    )?, )*
                    $( $( $embed: <$embed_ty as $crate::framework::model::Model>::from_value(value, path)?, )* )?
                })
            }

            fn to_value(&self) -> $crate::framework::value::Value {
                #[allow(unused_mut)]
                let mut value = $crate::framework::value::Value::object([
                    $( (stringify!($field), $crate::framework::model::Model::to_value(&self.$field)), )*
                ]);
                $( $(
                    if let $crate::framework::value::Value::Map(embedded) =
                        $crate::framework::model::Model::to_value(&self.$embed)
                    {
                        for (name, item) in embedded {
                            value.set(&name, item);
                        }
                    }
                )* )?
                value
            }
        }

        impl $crate::framework::model::Fields for $name {
            fn fields() -> Vec<&'static str> {
                #[allow(unused_mut)]
                let mut fields = vec![$( stringify!($field) ),*];
                $( $( fields.extend(<$embed_ty as $crate::framework::model::Fields>::fields()); )* )?
                fields
            }
        }
    };
}

/// Checks that model `M` reads and writes exactly the values of `block`: a value with every
/// attribute known, then one with every attribute null, then unknown, each at every depth,
/// must survive a round trip unchanged. A missing, extra or mistyped field fails it.
///
/// # Panics
/// With the path and the difference, when the model and the schema disagree.
#[cfg(test)]
pub fn check_model<M: Model + Fields>(block: &super::schema::Block) {
    use super::schema::Block;
    let mut names: Vec<&str> = block
        .attributes
        .iter()
        .map(|a| a.name)
        .chain(block.blocks.iter().map(|b| b.name))
        .collect();
    let mut fields = M::fields();
    names.sort_unstable();
    fields.sort_unstable();
    assert_eq!(
        fields, names,
        "the model's fields are not the schema's attributes and blocks"
    );
    for fill in [Fill::Known, Fill::Null, Fill::Unknown] {
        let sample = sample_block(block, fill);
        let model = M::from_value(&sample, &AttributePath::root())
            .unwrap_or_else(|e| panic!("{fill:?} values do not fit the model: {e}"));
        assert_eq!(model.to_value(), sample, "{fill:?} values do not survive a round trip");
    }

    fn sample_block(block: &Block, fill: Fill) -> Value {
        let mut value = Value::object([]);
        for attribute in &block.attributes {
            let sample = match fill {
                Fill::Known => sample_of(&attribute.ty),
                Fill::Null => Value::Null,
                Fill::Unknown => Value::Unknown,
            };
            value.set(attribute.name, sample);
        }
        for nested in &block.blocks {
            let element = sample_block(&nested.block, fill);
            let sample = match nested.nesting {
                super::schema::Nesting::Single => element,
                _ => Value::List(vec![element]),
            };
            value.set(nested.name, sample);
        }
        value
    }

    fn sample_of(ty: &super::types::Type) -> Value {
        use super::types::Type;
        match ty {
            Type::Bool => Value::Bool(true),
            Type::Number => Value::int(7),
            Type::List(element) | Type::Set(element) => Value::List(vec![sample_of(element)]),
            Type::Map(element) => Value::object([("k", sample_of(element))]),
            Type::Object(attributes) => Value::Map(
                attributes
                    .iter()
                    .map(|(name, ty)| (name.clone(), sample_of(ty)))
                    .collect(),
            ),
            _ => Value::string("s"),
        }
    }
}

/// How [`check_model`] fills a sample value's attributes.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
enum Fill {
    Known,
    Null,
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::schema::{Attribute, Block, NestedBlock};
    use crate::framework::types::Type;

    crate::model! {
        /// A layer.
        struct LayerModel {
            name: Tf<String>,
            size: Tf<i64>,
        }
    }

    crate::model! {
        /// Shared attributes.
        struct SharedModel {
            policy_id: Tf<String>,
        }
    }

    crate::model! {
        /// A thing.
        struct ThingModel {
            id: Tf<String>,
            tags: Tf<BTreeMap<String, String>>,
            enabled: Tf<bool>,
            layer: Vec<LayerModel>,
        }
        embed {
            shared: SharedModel,
        }
    }

    fn block() -> Block {
        Block::new(vec![
            Attribute::computed("id", Type::String),
            Attribute::optional("tags", Type::map(Type::String)),
            Attribute::optional("enabled", Type::Bool),
            Attribute::optional("policy_id", Type::String),
        ])
        .with_blocks(vec![NestedBlock::list(
            "layer",
            Block::new(vec![
                Attribute::required("name", Type::String),
                Attribute::optional("size", Type::Number),
            ]),
            0,
        )])
    }

    #[test]
    fn a_model_matching_its_schema_passes_the_check() {
        check_model::<ThingModel>(&block());
    }

    #[test]
    #[should_panic(expected = "the model's fields are not the schema's attributes and blocks")]
    fn a_missing_attribute_fails_the_check() {
        let mut schema = block();
        schema.attributes.push(Attribute::optional("extra", Type::String));
        check_model::<ThingModel>(&schema);
    }

    #[test]
    #[should_panic(expected = "do not fit the model")]
    fn a_mistyped_attribute_fails_the_check() {
        let mut schema = block();
        schema.attributes[2] = Attribute::optional("enabled", Type::String);
        check_model::<ThingModel>(&schema);
    }

    #[test]
    fn unknown_and_null_are_kept_apart_and_errors_name_the_path() {
        let value = Value::object([
            ("id", Value::Unknown),
            ("enabled", Value::Null),
            ("layer", Value::List(vec![Value::object([("name", Value::int(3))])])),
        ]);
        let err = ThingModel::from_value(&value, &AttributePath::root()).unwrap_err();
        assert_eq!(err.path, AttributePath::attr_root("layer").index(0).attr("name"));
        let value = Value::object([("id", Value::Unknown), ("enabled", Value::Null)]);
        let thing = ThingModel::from_value(&value, &AttributePath::root()).unwrap();
        assert!(thing.id.is_unknown() && thing.enabled.is_null() && thing.layer.is_empty());
    }
}
