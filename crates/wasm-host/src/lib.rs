//! The wasmtime plumbing both runtimes share: an engine whose epoch ticks, compiled guests
//! cached by digest, stores that enforce a container's limits, the ports guests serve on, the
//! file descriptors each container may hold, and where their failed requests are reported.

#![warn(missing_docs)]

pub mod cache;
pub mod capacity;
pub mod descriptors;
pub mod failures;
pub mod limits;
pub mod ports;
pub mod store;

mod engine;

pub use engine::{SetupError, TickingEngine};
