//! The end-to-end suite: one test binary, so that the wasm fixtures, the registry and the API
//! server stand-in are set up once and the suite links once (each of these modules was a
//! binary of its own, about 86 MB each in a debug build). Run one area with
//! `cargo test -p e2e --test suite <module>::`.
//!
//! Two areas stay binaries of their own: certificate rotation (`tests/rotation.rs`) shortens
//! the stand-in's signing duration for its whole process, and a user's first pod
//! (`tests/hello.rs`) is placed by the scheduler, so its node must be the only wasm node up.

mod apiserver;
mod bootstrap;
mod compaction;
mod components;
mod config_file;
mod descriptors;
mod dns;
mod hostile;
mod http_shares;
mod images;
mod kubeconfig;
mod kubelet_api;
mod lifecycle;
mod limits;
mod networking;
mod node;
mod operations;
mod outage;
mod pods;
mod probes;
mod runtime_class;
mod spin;
mod standalone;
mod static_pods;
mod volumes;
mod wascc;
mod workers;
