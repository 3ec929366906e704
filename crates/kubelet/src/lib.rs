//! The provider-independent Kubernetes node agent. It owns everything that is Kubernetes (node
//! registration and heartbeats, the pods bound to the node, images, logs, status, events and the
//! kubelet API); a [`runtime::Runtime`] only prepares and runs WebAssembly.

#![warn(missing_docs)]

pub mod cni;
pub mod config;
pub mod http_idle;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod pods;
pub mod runtime;
pub mod server;
pub mod standalone;
pub mod time;
mod ttl_cache;
pub mod workers;

#[cfg(fuzzing)]
pub mod fuzzing;

mod agent;

pub use agent::{AgentError, run_node};
pub mod tls;
