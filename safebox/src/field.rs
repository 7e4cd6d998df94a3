//! Locations inside a user's input, in the input's own terms.
//!
//! The core knows nothing of Terraform, but its errors must still say *where* a problem is so
//! the provider can attach it to an attribute path (`signer[1].public_key_pem`) and the CLI can
//! print it. A [`FieldPath`] is that location: block and attribute names and element indexes.

use std::fmt;

/// One step into a nested input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldStep {
    /// A block or attribute name.
    Name(String),
    /// The position of an element in an ordered collection (repeated blocks, lists).
    Index(usize),
    /// The key of an element in a map.
    Key(String),
}

/// Where in the input a problem sits; empty means the input as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(Vec<FieldStep>);

impl FieldPath {
    /// The input as a whole.
    #[must_use]
    pub fn root() -> Self {
        Self::default()
    }

    /// A top-level block or attribute.
    #[must_use]
    pub fn attr(name: &str) -> Self {
        Self::root().name(name)
    }

    /// Steps into the block or attribute `name`.
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        self.0.push(FieldStep::Name(name.to_owned()));
        self
    }

    /// Steps into element `index` of a repeated block or list.
    #[must_use]
    pub fn index(mut self, index: usize) -> Self {
        self.0.push(FieldStep::Index(index));
        self
    }

    /// Steps into the map element `key`.
    #[must_use]
    pub fn key(mut self, key: &str) -> Self {
        self.0.push(FieldStep::Key(key.to_owned()));
        self
    }

    /// The steps from the root.
    #[must_use]
    pub fn steps(&self) -> &[FieldStep] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                FieldStep::Name(name) if i == 0 => write!(f, "{name}")?,
                FieldStep::Name(name) => write!(f, ".{name}")?,
                FieldStep::Index(index) => write!(f, "[{index}]")?,
                FieldStep::Key(key) => write!(f, "[{key:?}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_hcl_references() {
        let path = FieldPath::attr("signer").index(1).name("public_key_pem");
        assert_eq!(path.to_string(), "signer[1].public_key_pem");
        assert_eq!(
            FieldPath::attr("expected_pcrs").key("0").to_string(),
            "expected_pcrs[\"0\"]"
        );
    }
}
