//! Runtime workers: guests run in a few long-lived worker processes (the agent's own binary,
//! `worker` subcommand) rather than in the agent, so that they outlive the agent's restarts,
//! crashes and upgrades, and a worker's crash ends only its own guests.
//!
//! ```text
//! agent (WorkerPool: a Runtime)  --unix socket, protocol.rs-->  worker 0 (serve: a Runtime's guests)
//!                                --unix socket------------->  worker 1 ...
//! ```
//!
//! The agent starts a worker when nobody answers on its socket (`<data-dir>/workers/<n>.sock`),
//! and on its own start takes over what the workers hold: a pod whose status says a container
//! runs claims it by its container ID and follows it on, with no restart. A worker writes its
//! guests' CRI log files and holds their listening sockets itself.

pub mod key;
mod link;
pub mod pool;
pub mod protocol;
mod spawn;
pub mod worker;

#[cfg(test)]
mod tests;

pub use pool::{PoolOptions, WorkerPool};
pub use spawn::Launcher;
pub use worker::{WorkerOptions, serve};

/// A runtime worker could not be started, reached or served.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A worker did not greet the agent in time.
    #[error(
        "runtime worker {index} did not answer within 30s: see its log in {}, or start the agent with --runtime-workers 0 to run guests in the agent",
        .dir.display()
    )]
    NoGreeting {
        /// The worker's index.
        index: usize,
        /// The workers' directory.
        dir: std::path::PathBuf,
    },
}
