//! # terraform-provider-safebox
//!
//! A Terraform provider (plugin protocol 6) for Safebox. It is a thin adapter: it translates
//! HCL values into calls on the `safebox` core and core errors into diagnostics with attribute
//! paths.
//!
//! - [`plugin`]: go-plugin transport (handshake, AutoMTLS with a pinned client certificate,
//!   gRPC controller/stdio/broker services).
//! - [`provider`]: the `tfplugin6.Provider` service.
//! - [`framework`]: cty types and values, schemas, diagnostics, generic validation and planning.
//! - [`config`]: the provider block and the backend and store it configures; [`lease`]: the
//!   store's apply lease, which orders the applies of runs sharing a store.
//! - [`resources`], [`data_sources`], [`functions`]: one file per resource type, data source
//!   and provider function.
//! - [`governance`]: the one layer every governed change passes through (policies, approvals,
//!   the audit log); it knows no resource.
//! - [`record`], [`images`], [`boxes`], [`clock`]: what resources share below governance:
//!   backend records (checked against state on refresh), published images and running boxes
//!   as their records describe them, and the time.
//!
//! Layering: `resources` → `governance` → (`record`, `images`, `boxes`, `clock`, `framework`)
//! → the `safebox` core. Nothing imports a layer above it.
//!
//! Unit tests: `cargo test -p terraform-provider-safebox`; acceptance tests against the real
//! Terraform live in `acceptance-tests/`.
#![deny(missing_docs)]

pub mod boxes;
pub mod clock;
pub mod config;
pub mod data_sources;
pub mod framework;
pub mod functions;
pub mod governance;
pub mod images;
pub mod lease;
pub mod log;
pub mod plugin;
pub mod provider;
pub mod record;
pub mod resource;
pub mod resources;
pub mod run;
pub mod tags;
