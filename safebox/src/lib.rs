//! # Safebox core
//!
//! The domain of Safebox, free of Terraform and cloud SDK types, so that the provider, the
//! `safebox` CLI (crate `safebox-cli`) and future front ends share one implementation:
//!
//! - [`agent_api`]: the protocol to the agent inside a box, and its client.
//! - [`box_key`]: the per-box keys that sign requests managing a box's agent.
//! - [`attest`]: AWS Nitro attestation documents: strict parsing, chain to a pinned root,
//!   policy checks, and the local backend's software NSM.
//! - [`image`]: the reproducible two-image pipeline (EIF builder, measurements, seal proof).
//! - [`govern`]: M-of-N governance policies and signer keys.
//! - [`cloud`]: the [`cloud::Cloud`] traits every backend implements (images and boxes, and
//!   capabilities a backend has or not), and [`local`], the embedded backend that runs
//!   everything on this machine.
//! - [`store`]: records, approvals, the audit log and the apply lease ([`store::Store`]):
//!   [`store::FolderStore`] keeps them in a `state_dir`, [`store::objects::ObjectStore`] as
//!   write-once objects in a bucket.
//! - [`sealed_key`]: the KMS key policy that releases a key only to an attested enclave.
//! - [`link`]: attested links: the shared key two verified boxes derive, and its binding.
//! - [`canonical`]: RFC 8785 canonical JSON, the byte form of every digest auditors compare.
//! - [`field`]: locations inside user input, so errors can name the attribute to fix.
//! - [`private`]: folders and files only this user may read (keys, the build cache).
//! - [`process`]: processes on this machine (start time, signals), for the backends' boxes
//!   and the Terraform run that holds the store's apply lease.
//! - [`qemu`]: the local box of a `"uki"` image: its disk booted under QEMU with OVMF and a
//!   software TPM, the agent reached through a loopback forward.
//!
//! Tests: `cargo test -p safebox`.
#![deny(missing_docs)]

pub mod agent_api;
pub mod attest;
pub mod box_key;
pub mod canonical;
pub mod cloud;
pub mod field;
pub mod govern;
pub mod image;
pub mod link;
pub mod local;
pub mod private;
pub mod process;
pub mod qemu;
pub mod sealed_key;
pub mod store;
pub mod work;
