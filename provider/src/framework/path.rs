//! Attribute paths: where in a resource a diagnostic points.

use std::fmt;

use safebox::field::{FieldPath, FieldStep};
use safebox_proto::tfplugin6 as pb;

/// One step of an [`AttributePath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An attribute or nested block by name.
    Attr(String),
    /// A map element by key.
    Key(String),
    /// A list element by position.
    Index(i64),
}

/// A path from the resource's root to an attribute or element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttributePath(Vec<Step>);

impl AttributePath {
    /// The resource as a whole.
    #[must_use]
    pub fn root() -> Self {
        Self::default()
    }

    /// The top-level attribute or block `name`.
    #[must_use]
    pub fn attr_root(name: &str) -> Self {
        Self::root().attr(name)
    }

    /// This path extended by attribute `name`.
    #[must_use]
    pub fn attr(&self, name: &str) -> Self {
        self.with(Step::Attr(name.to_owned()))
    }

    /// This path extended by map key `key`.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        self.with(Step::Key(key.to_owned()))
    }

    /// This path extended by list index `index`.
    #[must_use]
    pub fn index(&self, index: usize) -> Self {
        self.with(Step::Index(i64::try_from(index).unwrap_or(i64::MAX)))
    }

    fn with(&self, step: Step) -> Self {
        let mut steps = self.0.clone();
        steps.push(step);
        Self(steps)
    }

    /// The steps from the root.
    #[must_use]
    pub fn steps(&self) -> &[Step] {
        &self.0
    }

    /// The protocol form.
    #[must_use]
    pub fn to_proto(&self) -> pb::AttributePath {
        use pb::attribute_path::step::Selector;
        pb::AttributePath {
            steps: self
                .0
                .iter()
                .map(|step| pb::attribute_path::Step {
                    selector: Some(match step {
                        Step::Attr(name) => Selector::AttributeName(name.clone()),
                        Step::Key(key) => Selector::ElementKeyString(key.clone()),
                        Step::Index(index) => Selector::ElementKeyInt(*index),
                    }),
                })
                .collect(),
        }
    }
}

impl From<&FieldPath> for AttributePath {
    fn from(field: &FieldPath) -> Self {
        Self(
            field
                .steps()
                .iter()
                .map(|step| match step {
                    FieldStep::Name(name) => Step::Attr(name.clone()),
                    FieldStep::Key(key) => Step::Key(key.clone()),
                    FieldStep::Index(index) => Step::Index(i64::try_from(*index).unwrap_or(i64::MAX)),
                })
                .collect(),
        )
    }
}

impl fmt::Display for AttributePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Attr(name) if i == 0 => write!(f, "{name}")?,
                Step::Attr(name) => write!(f, ".{name}")?,
                Step::Key(key) => write!(f, "[{key:?}]")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}
