//! Terraform's type system (cty) as the plugin protocol carries it.
//!
//! Types travel as JSON: a primitive is a string (`"string"`), a collection a two-element array
//! (`["list","string"]`), an object `["object",{"attr":type}]`, a tuple `["tuple",[types]]`.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

/// A cty type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// `bool`
    Bool,
    /// `number`
    Number,
    /// `string`
    String,
    /// `dynamic`: the value carries its own type.
    Dynamic,
    /// `list(T)`
    List(Box<Type>),
    /// `set(T)`
    Set(Box<Type>),
    /// `map(T)`
    Map(Box<Type>),
    /// `object({...})`
    Object(BTreeMap<String, Type>),
    /// `tuple([...])`
    Tuple(Vec<Type>),
}

impl Type {
    /// `list(element)`.
    #[must_use]
    pub fn list(element: Type) -> Self {
        Self::List(Box::new(element))
    }

    /// `set(element)`.
    #[must_use]
    pub fn set(element: Type) -> Self {
        Self::Set(Box::new(element))
    }

    /// `map(element)`.
    #[must_use]
    pub fn map(element: Type) -> Self {
        Self::Map(Box::new(element))
    }

    /// `object({...})` from `(name, type)` pairs.
    #[must_use]
    pub fn object<'a>(attributes: impl IntoIterator<Item = (&'a str, Type)>) -> Self {
        Self::Object(attributes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// The type's JSON form, as `Schema.Attribute.type` carries it.
    #[must_use]
    pub fn to_json(&self) -> Json {
        match self {
            Self::Bool => json!("bool"),
            Self::Number => json!("number"),
            Self::String => json!("string"),
            Self::Dynamic => json!("dynamic"),
            Self::List(t) => json!(["list", t.to_json()]),
            Self::Set(t) => json!(["set", t.to_json()]),
            Self::Map(t) => json!(["map", t.to_json()]),
            Self::Object(attrs) => json!([
                "object",
                attrs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<serde_json::Map<_, _>>()
            ]),
            Self::Tuple(types) => json!(["tuple", types.iter().map(Type::to_json).collect::<Vec<_>>()]),
        }
    }

    /// Parses a type's JSON form.
    ///
    /// # Errors
    /// A message naming what is not a type.
    pub fn from_json(json: &Json) -> Result<Self, String> {
        match json {
            Json::String(s) => match s.as_str() {
                "bool" => Ok(Self::Bool),
                "number" => Ok(Self::Number),
                "string" => Ok(Self::String),
                "dynamic" => Ok(Self::Dynamic),
                other => Err(format!("unknown primitive type {other:?}")),
            },
            Json::Array(parts) if parts.len() == 2 => {
                let kind = parts[0].as_str().unwrap_or_default();
                match kind {
                    "list" => Ok(Self::list(Self::from_json(&parts[1])?)),
                    "set" => Ok(Self::set(Self::from_json(&parts[1])?)),
                    "map" => Ok(Self::map(Self::from_json(&parts[1])?)),
                    "object" => {
                        let attrs = parts[1].as_object().ok_or("object type without attributes")?;
                        Ok(Self::Object(
                            attrs
                                .iter()
                                .map(|(k, v)| Ok((k.clone(), Self::from_json(v)?)))
                                .collect::<Result<_, String>>()?,
                        ))
                    }
                    "tuple" => {
                        let types = parts[1].as_array().ok_or("tuple type without element types")?;
                        Ok(Self::Tuple(
                            types.iter().map(Self::from_json).collect::<Result<_, _>>()?,
                        ))
                    }
                    other => Err(format!("unknown type constructor {other:?}")),
                }
            }
            other => Err(format!("{other} is not a type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_round_trips() {
        let t = Type::object([
            ("a", Type::list(Type::String)),
            ("b", Type::map(Type::Number)),
            ("c", Type::Tuple(vec![Type::Bool, Type::Dynamic])),
            ("d", Type::set(Type::object([("x", Type::String)]))),
        ]);
        let json = t.to_json();
        assert_eq!(json[0], "object");
        assert_eq!(json[1]["a"], json!(["list", "string"]));
        assert_eq!(Type::from_json(&json).unwrap(), t);
        assert!(Type::from_json(&json!(["list"])).is_err());
        assert!(Type::from_json(&json!("float")).is_err());
    }
}
