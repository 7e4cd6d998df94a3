//! Generated bindings for the wire protocols Terraform speaks to a provider plugin.
//!
//! - [`tfplugin6`]: Terraform's provider protocol, version 6 (`proto/tfplugin6.proto`).
//! - [`plugin`]: HashiCorp go-plugin's controller, stdio and broker services, which Terraform
//!   dials beside the provider service on the same gRPC connection.
//!
//! The `.proto` files are written from the published protocol definitions; field names and
//! numbers are wire facts and must not change.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Terraform plugin protocol 6.
pub mod tfplugin6 {
    tonic::include_proto!("tfplugin6");
}

/// go-plugin's auxiliary services (`plugin` package).
pub mod plugin {
    tonic::include_proto!("plugin");
}
