//! Terraform values and their two wire encodings (MessagePack and JSON).
//!
//! A [`Value`] carries no type of its own: the schema's [`Type`] says how to read and write it,
//! as cty's encodings require. Unknown values (planned but not yet known) are MessagePack
//! extension values of type 0; refined unknowns arrive with extension type 12 and read as
//! plain unknowns.

use std::collections::BTreeMap;

use super::path::AttributePath;
use super::types::Type;

/// cty's MessagePack extension type for an unknown value.
const EXT_UNKNOWN: i8 = 0;
/// cty's MessagePack extension type for an unknown value with refinements.
const EXT_UNKNOWN_REFINED: i8 = 12;
/// Deepest nesting accepted from the wire; schemas here nest a few levels at most.
const MAX_DEPTH: usize = 64;

/// A number. Terraform numbers are arbitrary precision; Safebox's are counts and sizes, so
/// integers are exact and anything else is a double.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer.
    Int(i64),
    /// Anything else.
    Float(f64),
}

/// A value of some [`Type`].
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// No value.
    #[default]
    Null,
    /// Known only after apply.
    Unknown,
    /// A bool.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// A list, set or tuple.
    List(Vec<Value>),
    /// A map or object.
    Map(BTreeMap<String, Value>),
}

static NULL: Value = Value::Null;

impl Value {
    /// Whether `self` and `other`, both of type `ty`, are the same value: as `==`, but the
    /// elements of a set may come in any order.
    #[must_use]
    pub fn same_as(&self, other: &Value, ty: &Type) -> bool {
        match (self, other, ty) {
            (Self::List(a), Self::List(b), Type::Set(element)) => {
                a.len() == b.len()
                    && a.iter().all(|x| b.iter().any(|y| x.same_as(y, element)))
                    && b.iter().all(|y| a.iter().any(|x| x.same_as(y, element)))
            }
            (Self::List(a), Self::List(b), Type::List(element)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y, element))
            }
            (Self::Map(a), Self::Map(b), Type::Object(attributes)) => {
                a.len() == b.len()
                    && a.iter().all(|(name, x)| {
                        b.get(name)
                            .is_some_and(|y| attributes.get(name).map_or(x == y, |t| x.same_as(y, t)))
                    })
            }
            (Self::Map(a), Self::Map(b), Type::Map(element)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(key, x)| b.get(key).is_some_and(|y| x.same_as(y, element)))
            }
            _ => self == other,
        }
    }

    /// A string value.
    #[must_use]
    pub fn string(s: impl Into<String>) -> Self {
        Self::String(s.into())
    }

    /// An integer value.
    #[must_use]
    pub fn int(n: i64) -> Self {
        Self::Number(Number::Int(n))
    }

    /// An object value from `(name, value)` pairs.
    #[must_use]
    pub fn object<'a>(attributes: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self::Map(attributes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// Whether this is null.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// Whether this is unknown (at the top level).
    #[must_use]
    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::Unknown)
    }

    /// Whether no part of this value is unknown.
    #[must_use]
    pub fn is_fully_known(&self) -> bool {
        match self {
            Self::Unknown => false,
            Self::List(items) => items.iter().all(Value::is_fully_known),
            Self::Map(items) => items.values().all(Value::is_fully_known),
            _ => true,
        }
    }

    /// The attribute or map element `name`; null when absent or when this is not a map.
    #[must_use]
    pub fn get(&self, name: &str) -> &Value {
        match self {
            Self::Map(items) => items.get(name).unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    /// Sets the attribute `name` of an object (turning a null into an object).
    pub fn set(&mut self, name: &str, value: Value) {
        if !matches!(self, Self::Map(_)) {
            *self = Self::Map(BTreeMap::new());
        }
        if let Self::Map(items) = self {
            items.insert(name.to_owned(), value);
        }
    }

    /// The string, if this is a known string.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is a known bool.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if this is a known whole number.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Number(Number::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// The elements, if this is a known list, set or tuple; an empty slice for null.
    #[must_use]
    pub fn as_list(&self) -> &[Value] {
        match self {
            Self::List(items) => items,
            _ => &[],
        }
    }

    /// The elements, if this is a known map or object.
    #[must_use]
    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Self::Map(items) => Some(items),
            _ => None,
        }
    }

    /// Encodes as MessagePack the way cty does, driven by `ty`.
    #[must_use]
    pub fn to_msgpack(&self, ty: &Type) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &self.to_rmpv(ty));
        out
    }

    fn to_rmpv(&self, ty: &Type) -> rmpv::Value {
        use rmpv::Value as M;
        match (self, ty) {
            (Self::Null, _) => M::Nil,
            (Self::Unknown, _) => M::Ext(EXT_UNKNOWN, vec![0]),
            (Self::Bool(b), _) => M::Boolean(*b),
            (Self::Number(Number::Int(n)), _) => M::from(*n),
            (Self::Number(Number::Float(f)), _) => M::F64(*f),
            (Self::String(s), _) => M::from(s.as_str()),
            (Self::List(items), Type::List(t) | Type::Set(t)) => M::Array(items.iter().map(|v| v.to_rmpv(t)).collect()),
            (Self::List(items), Type::Tuple(types)) => {
                M::Array(items.iter().zip(types).map(|(v, t)| v.to_rmpv(t)).collect())
            }
            (Self::Map(items), Type::Map(t)) => {
                M::Map(items.iter().map(|(k, v)| (M::from(k.as_str()), v.to_rmpv(t))).collect())
            }
            (Self::Map(items), Type::Object(attrs)) => M::Map(
                attrs
                    .iter()
                    .map(|(k, t)| (M::from(k.as_str()), items.get(k).unwrap_or(&NULL).to_rmpv(t)))
                    .collect(),
            ),
            // A value that does not fit its type is a provider bug; encode it as null rather
            // than crash, and let Terraform report the inconsistency.
            _ => M::Nil,
        }
    }

    /// Decodes cty's MessagePack form of a value of type `ty`.
    ///
    /// # Errors
    /// A [`DecodeError`] with the path of the offending element.
    pub fn from_msgpack(bytes: &[u8], ty: &Type) -> Result<Self, DecodeError> {
        let mut reader = bytes;
        let raw = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
            .map_err(|e| DecodeError::new(AttributePath::root(), format!("malformed MessagePack: {e}")))?;
        if !reader.is_empty() {
            return Err(DecodeError::new(
                AttributePath::root(),
                format!("{} unexpected bytes after the MessagePack value", reader.len()),
            ));
        }
        Self::from_rmpv(&raw, ty, &AttributePath::root())
    }

    fn from_rmpv(raw: &rmpv::Value, ty: &Type, path: &AttributePath) -> Result<Self, DecodeError> {
        use rmpv::Value as M;
        let mismatch = || {
            DecodeError::new(
                path.clone(),
                format!("expected a value of type {}, got {raw}", ty.to_json()),
            )
        };
        Ok(match (raw, ty) {
            (M::Nil, _) => Self::Null,
            (M::Ext(EXT_UNKNOWN | EXT_UNKNOWN_REFINED, _), _) => Self::Unknown,
            (_, Type::Dynamic) => {
                return Err(DecodeError::new(
                    path.clone(),
                    "dynamically typed values are not supported here".into(),
                ))
            }
            (M::Boolean(b), Type::Bool) => Self::Bool(*b),
            (M::Integer(n), Type::Number) => match n.as_i64() {
                Some(n) => Self::int(n),
                None => Self::Number(Number::Float(n.as_f64().ok_or_else(mismatch)?)),
            },
            (M::F32(f), Type::Number) => float(f64::from(*f)),
            (M::F64(f), Type::Number) => float(*f),
            (M::String(s), Type::Number) => parse_number(s.as_str().ok_or_else(mismatch)?).ok_or_else(mismatch)?,
            (M::String(s), Type::String) => Self::String(s.as_str().ok_or_else(mismatch)?.to_owned()),
            (M::Array(items), Type::List(t) | Type::Set(t)) => Self::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::from_rmpv(v, t, &path.index(i)))
                    .collect::<Result<_, _>>()?,
            ),
            (M::Array(items), Type::Tuple(types)) if items.len() == types.len() => Self::List(
                items
                    .iter()
                    .zip(types)
                    .enumerate()
                    .map(|(i, (v, t))| Self::from_rmpv(v, t, &path.index(i)))
                    .collect::<Result<_, _>>()?,
            ),
            (M::Map(entries), Type::Map(_) | Type::Object(_)) => {
                let mut out = BTreeMap::new();
                for (k, v) in entries {
                    let key = k.as_str().ok_or_else(mismatch)?;
                    let (element_type, element_path) = match ty {
                        Type::Map(t) => (t.as_ref(), path.key(key)),
                        Type::Object(attrs) => (
                            attrs.get(key).ok_or_else(|| {
                                DecodeError::new(path.clone(), format!("unexpected attribute {key:?}"))
                            })?,
                            path.attr(key),
                        ),
                        _ => unreachable!("matched map or object above"),
                    };
                    out.insert(key.to_owned(), Self::from_rmpv(v, element_type, &element_path)?);
                }
                Self::Map(out)
            }
            _ => return Err(mismatch()),
        })
    }

    /// Encodes as JSON (Terraform's state form). Unknown values have no JSON form and become
    /// null; callers store only fully known values.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Self::Null | Self::Unknown => J::Null,
            Self::Bool(b) => J::Bool(*b),
            Self::Number(Number::Int(n)) => J::from(*n),
            Self::Number(Number::Float(f)) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Self::String(s) => J::String(s.clone()),
            Self::List(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Self::Map(items) => J::Object(items.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Decodes the JSON form Terraform uses for stored state (`RawState.json`).
    ///
    /// # Errors
    /// A [`DecodeError`] with the path of the offending element.
    pub fn from_json(json: &serde_json::Value, ty: &Type, path: &AttributePath) -> Result<Self, DecodeError> {
        use serde_json::Value as J;
        let mismatch = || {
            DecodeError::new(
                path.clone(),
                format!("expected a value of type {}, got {json}", ty.to_json()),
            )
        };
        Ok(match (json, ty) {
            (J::Null, _) => Self::Null,
            (J::Bool(b), Type::Bool) => Self::Bool(*b),
            (J::Number(n), Type::Number) => match n.as_i64() {
                Some(i) => Self::int(i),
                None => float(n.as_f64().ok_or_else(mismatch)?),
            },
            (J::String(s), Type::Number) => parse_number(s).ok_or_else(mismatch)?,
            (J::String(s), Type::String) => Self::String(s.clone()),
            (J::Array(items), Type::List(t) | Type::Set(t)) => Self::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::from_json(v, t, &path.index(i)))
                    .collect::<Result<_, _>>()?,
            ),
            (J::Array(items), Type::Tuple(types)) if items.len() == types.len() => Self::List(
                items
                    .iter()
                    .zip(types)
                    .enumerate()
                    .map(|(i, (v, t))| Self::from_json(v, t, &path.index(i)))
                    .collect::<Result<_, _>>()?,
            ),
            (J::Object(entries), Type::Map(t)) => Self::Map(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Self::from_json(v, t, &path.key(k))?)))
                    .collect::<Result<_, DecodeError>>()?,
            ),
            (J::Object(entries), Type::Object(attrs)) => {
                let mut out = BTreeMap::new();
                for (k, v) in entries {
                    // Stored state may hold attributes an older schema had; they are dropped.
                    if let Some(t) = attrs.get(k) {
                        out.insert(k.clone(), Self::from_json(v, t, &path.attr(k))?);
                    }
                }
                Self::Map(out)
            }
            _ => return Err(mismatch()),
        })
    }
}

fn float(f: f64) -> Value {
    // Whole numbers read as integers so that `as_i64` sees them, whichever encoding was used.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        Value::int(f as i64)
    } else {
        Value::Number(Number::Float(f))
    }
}

fn parse_number(s: &str) -> Option<Value> {
    s.parse::<i64>()
        .map(Value::int)
        .ok()
        .or_else(|| s.parse::<f64>().ok().filter(|f| f.is_finite()).map(float))
}

/// A value that could not be decoded, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Where in the value.
    pub path: AttributePath,
    /// What was wrong.
    pub message: String,
}

impl DecodeError {
    fn new(path: AttributePath, message: String) -> Self {
        Self { path, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_type() -> Type {
        Type::object([
            ("name", Type::String),
            ("count", Type::Number),
            ("on", Type::Bool),
            ("tags", Type::map(Type::String)),
            ("rules", Type::list(Type::object([("roles", Type::set(Type::String))]))),
        ])
    }

    #[test]
    fn msgpack_round_trips_including_unknowns() {
        let ty = schema_type();
        let value = Value::object([
            ("name", Value::string("gov")),
            ("count", Value::int(-3)),
            ("on", Value::Unknown),
            ("tags", Value::Map([("a".to_owned(), Value::string("b"))].into())),
            (
                "rules",
                Value::List(vec![Value::object([(
                    "roles",
                    Value::List(vec![Value::string("auditor"), Value::Unknown]),
                )])]),
            ),
        ]);
        let bytes = value.to_msgpack(&ty);
        assert_eq!(Value::from_msgpack(&bytes, &ty).unwrap(), value);
        assert!(!value.is_fully_known());
    }

    #[test]
    fn unknown_is_cty_extension_zero() {
        assert_eq!(Value::Unknown.to_msgpack(&Type::String), [0xd4, 0x00, 0x00]);
        // A refined unknown (extension 12, with a payload) is still unknown.
        assert_eq!(
            Value::from_msgpack(&[0xd5, 12, 0x81, 0x01], &Type::String).unwrap(),
            Value::Unknown
        );
    }

    #[test]
    fn numbers_accept_every_cty_encoding() {
        let ty = Type::Number;
        assert_eq!(Value::from_msgpack(&[0x05], &ty).unwrap(), Value::int(5));
        let mut f = vec![0xcb];
        f.extend_from_slice(&2.0f64.to_be_bytes());
        assert_eq!(Value::from_msgpack(&f, &ty).unwrap(), Value::int(2));
        let mut s = vec![0xa3];
        s.extend_from_slice(b"1.5");
        assert_eq!(Value::from_msgpack(&s, &ty).unwrap(), Value::Number(Number::Float(1.5)));
    }

    #[test]
    fn malformed_input_is_an_error_with_a_path_never_a_panic() {
        let ty = schema_type();
        let err = Value::from_msgpack(&[0x81, 0xa5, b'c', b'o', b'u', b'n', b't', 0xc3], &ty).unwrap_err();
        assert_eq!(err.path.to_string(), "count");
        assert!(Value::from_msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff], &ty).is_err());
        assert!(Value::from_msgpack(&[0xc0, 0xc0], &ty).is_err());
        // Every prefix of a valid encoding and every single-byte corruption must decode or fail cleanly.
        let valid = Value::object([("name", Value::string("x")), ("rules", Value::List(vec![]))]).to_msgpack(&ty);
        for cut in 0..valid.len() {
            let _ = Value::from_msgpack(&valid[..cut], &ty);
            for flip in 0..=255u8 {
                let mut bytes = valid.clone();
                bytes[cut] = flip;
                let _ = Value::from_msgpack(&bytes, &ty);
            }
        }
        let deep = [0x91u8; 10_000];
        assert!(Value::from_msgpack(&deep, &Type::list(Type::String)).is_err());
    }

    #[test]
    fn json_state_decodes_and_drops_removed_attributes() {
        let json = serde_json::json!({"name": "gov", "count": 2, "gone": true, "tags": {"k": "v"}, "rules": [{"roles": ["a"]}]});
        let value = Value::from_json(&json, &schema_type(), &AttributePath::root()).unwrap();
        assert_eq!(value.get("count").as_i64(), Some(2));
        assert!(value.get("gone").is_null());
        assert_eq!(
            value.get("rules").as_list()[0].get("roles").as_list()[0].as_str(),
            Some("a")
        );
        let again = Value::from_json(&value.to_json(), &schema_type(), &AttributePath::root()).unwrap();
        assert_eq!(again, value);
    }
}
