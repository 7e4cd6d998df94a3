//! Diagnostics: what the provider tells the user, attached to the attribute at fault.

use safebox_proto::tfplugin6 as pb;

use super::path::AttributePath;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The operation failed.
    Error,
    /// The operation went on; the user should look.
    Warning,
}

/// One message to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// One line: what happened.
    pub summary: String,
    /// What was wrong and how to fix it.
    pub detail: String,
    /// The attribute at fault, if one is.
    pub path: Option<AttributePath>,
}

/// The diagnostics of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    /// An error about the request as a whole.
    pub fn error(&mut self, summary: impl Into<String>, detail: impl Into<String>) {
        self.push(Severity::Error, summary.into(), detail.into(), None);
    }

    /// An error about the attribute at `path`.
    pub fn error_at(&mut self, path: AttributePath, summary: impl Into<String>, detail: impl Into<String>) {
        self.push(Severity::Error, summary.into(), detail.into(), Some(path));
    }

    /// A warning about the request as a whole.
    pub fn warning(&mut self, summary: impl Into<String>, detail: impl Into<String>) {
        self.push(Severity::Warning, summary.into(), detail.into(), None);
    }

    fn push(&mut self, severity: Severity, summary: String, detail: String, path: Option<AttributePath>) {
        self.0.push(Diagnostic {
            severity,
            summary,
            detail,
            path,
        });
    }

    /// These diagnostics with every error turned into a warning.
    #[must_use]
    pub fn into_warnings(self) -> Self {
        Self(
            self.0
                .into_iter()
                .map(|d| Diagnostic {
                    severity: Severity::Warning,
                    ..d
                })
                .collect(),
        )
    }

    /// Leaves out every error at an attribute path that an earlier error already names: one
    /// mistake, one error (a value a validator refused is often refused again by the
    /// resource's own checks).
    pub fn dedupe_paths(&mut self) {
        let mut seen: Vec<AttributePath> = Vec::new();
        self.0.retain(|d| match (&d.severity, &d.path) {
            (Severity::Error, Some(path)) if seen.contains(path) => false,
            (Severity::Error, Some(path)) => {
                seen.push(path.clone());
                true
            }
            _ => true,
        });
    }

    /// Appends `other`.
    pub fn extend(&mut self, other: Self) {
        self.0.extend(other.0);
    }

    /// Whether any diagnostic is an error.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    /// The diagnostics so far.
    #[must_use]
    pub fn as_slice(&self) -> &[Diagnostic] {
        &self.0
    }

    /// The protocol form.
    #[must_use]
    pub fn into_proto(self) -> Vec<pb::Diagnostic> {
        self.0
            .into_iter()
            .map(|d| pb::Diagnostic {
                severity: match d.severity {
                    Severity::Error => pb::diagnostic::Severity::Error,
                    Severity::Warning => pb::diagnostic::Severity::Warning,
                } as i32,
                summary: d.summary,
                detail: d.detail,
                attribute: d.path.map(|p| p.to_proto()),
            })
            .collect()
    }
}
