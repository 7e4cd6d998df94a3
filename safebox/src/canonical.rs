//! Canonical JSON as RFC 8785 (JSON Canonicalization Scheme) defines it.
//!
//! Every digest Safebox shows an auditor (policy documents, change digests, manifests, seal
//! proofs) is the SHA-256 of these bytes, so anyone can recompute it with any JCS
//! implementation. Numbers are restricted to integers of magnitude at most 2^53: those are the
//! only ones our documents carry, and they are exactly representable in the IEEE doubles JCS
//! (section 3.2.2.3) serialises, so no float formatting is needed.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Largest integer magnitude that an IEEE 754 double represents exactly (RFC 8785 section 3.2.2.3).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A value that canonical JSON cannot represent faithfully.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("canonical JSON supports integers up to 2^53 - 1 only; {number} cannot be canonicalised")]
pub struct CanonicalJsonError {
    number: String,
}

/// Serialises `value` as RFC 8785 canonical JSON.
///
/// # Errors
/// Fails on a non-integral number or an integer beyond 2^53 - 1 in magnitude.
pub fn to_canonical_json(value: &Value) -> Result<String, CanonicalJsonError> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out)
}

/// `sha256:<hex>` of the canonical JSON of `value`.
///
/// # Errors
/// As [`to_canonical_json`].
pub fn canonical_digest(value: &Value) -> Result<String, CanonicalJsonError> {
    Ok(sha256_tagged(to_canonical_json(value)?.as_bytes()))
}

/// `sha256:<lower-case hex>` of `bytes`, the digest notation used across Safebox documents.
#[must_use]
pub fn sha256_tagged(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn write_value(value: &Value, out: &mut String) -> Result<(), CanonicalJsonError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => {
            let text = if let Some(n) = number.as_u64() {
                (n <= MAX_SAFE_INTEGER).then(|| n.to_string())
            } else if let Some(n) = number.as_i64() {
                (n.unsigned_abs() <= MAX_SAFE_INTEGER).then(|| n.to_string())
            } else {
                None
            };
            match text {
                Some(text) => out.push_str(&text),
                None => {
                    return Err(CanonicalJsonError {
                        number: number.to_string(),
                    })
                }
            }
        }
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Section 3.2.3: members sorted by their names as arrays of UTF-16 code units.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_value(item, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Section 3.2.2.2: only `"`, `\` and control characters are escaped, with the short forms
/// where JSON has them and lower-case `\u00xx` otherwise.
fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_members_by_utf16_code_units() {
        // U+1F600 is a surrogate pair (0xD83D...) in UTF-16, so it sorts before U+FB33 there
        // although its code point is larger.
        let value = json!({"\u{20ac}": 1, "\r": 2, "1": 3, "\u{1f600}": 4, "\u{80}": 5, "\u{fb33}": 6});
        let text = to_canonical_json(&value).unwrap();
        assert_eq!(
            text,
            "{\"\\r\":2,\"1\":3,\"\u{80}\":5,\"\u{20ac}\":1,\"\u{1f600}\":4,\"\u{fb33}\":6}"
        );
    }

    #[test]
    fn escapes_only_what_jcs_escapes() {
        let value = json!("a\"b\\c\n\u{1}\u{7f}é/");
        assert_eq!(to_canonical_json(&value).unwrap(), "\"a\\\"b\\\\c\\n\\u0001\u{7f}é/\"");
    }

    #[test]
    fn nests_without_whitespace() {
        let value = json!({"b": [true, null, -3], "a": {"y": "", "x": 0}});
        assert_eq!(
            to_canonical_json(&value).unwrap(),
            r#"{"a":{"x":0,"y":""},"b":[true,null,-3]}"#
        );
    }

    #[test]
    fn refuses_numbers_it_cannot_represent_exactly() {
        assert!(to_canonical_json(&json!(1.5)).is_err());
        assert!(to_canonical_json(&json!(1u64 << 53)).is_err());
        assert_eq!(to_canonical_json(&json!((1u64 << 53) - 1)).unwrap(), "9007199254740991");
    }

    #[test]
    fn digest_is_tagged_sha256_of_canonical_bytes() {
        assert_eq!(
            canonical_digest(&json!({})).unwrap(),
            // sha256("{}")
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
