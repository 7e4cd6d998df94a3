//! Logging in the form Terraform reads from a plugin's stderr: one JSON object per line with
//! `@level`, `@message`, `@module` and `@timestamp` (hclog's JSON format), which Terraform
//! shows under `TF_LOG` / `TF_LOG_PROVIDER`.

use std::io::Write as _;

use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn emit(level: &str, message: &str) {
    let timestamp = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
    let line = json!({
        "@level": level,
        "@message": message,
        "@module": "provider.safebox",
        "@timestamp": timestamp,
    });
    // Logging must never take the provider down; a closed stderr just loses the line.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Logs at info level.
pub fn info(message: &str) {
    emit("info", message);
}

/// Logs at debug level.
pub fn debug(message: &str) {
    emit("debug", message);
}

/// Logs at error level.
pub fn error(message: &str) {
    emit("error", message);
}
