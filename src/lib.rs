//! Slipway: immutable OS images for bare-metal Kubernetes.
//!
//! Data flows one way (see docs/architecture.md): `cluster` (validated model) ->
//! `pki` (secrets, generated once) -> `render` (per-node files and Ignition, pure) ->
//! `out` (atomic writes). The CLI in `main.rs` only parses arguments and calls [`pipeline`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod build;
pub mod cluster;
pub mod debian;
pub mod fs;
pub mod fsutil;
pub mod image;
pub mod iso;
pub mod kube;
pub mod oci;
pub mod out;
pub mod pipeline;
pub mod pki;
pub mod profile;
pub mod pxe;
pub mod render;
pub mod rootfs;
#[cfg(test)]
mod testserver;
pub mod vm;
