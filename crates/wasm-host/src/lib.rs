//! The wasmtime plumbing both runtimes share: an engine whose epoch ticks, compiled guests
//! cached by digest, stores that enforce a container's limits, and the ports guests serve on.

pub mod cache;
pub mod capacity;
pub mod limits;
pub mod ports;
pub mod store;

mod engine;

pub use engine::{SetupError, TickingEngine};
