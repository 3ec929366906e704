//! Test support for the krustlet workspace: a Kubernetes API server stand-in, a real OCI
//! registry launcher, and wasm fixtures built from the repository's sources.

#![warn(missing_docs)]

pub mod apiserver;
pub mod dns;
pub mod fixtures;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod scratch;
