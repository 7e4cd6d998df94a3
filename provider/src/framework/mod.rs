//! The schema and values layer every resource builds on: cty types and values with their
//! MessagePack and JSON encodings, schemas as data, diagnostics with attribute paths, and the
//! generic validation and planning that schemas drive.

pub mod diag;
pub mod function;
pub mod model;
pub mod modifiers;
pub mod path;
pub mod plan;
pub mod schema;
pub mod timeouts;
pub mod types;
pub mod validators;
pub mod value;
