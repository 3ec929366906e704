//! Starting a container, as a pipeline of named steps, each in its own module with its own
//! error type:
//!
//! 0. the pod's network, attached once for the whole pod ([`crate::cni`]) → `CniError`.
//! 1. [`image`]: the image, by its pull policy (events `Pulling`, `Pulled`) → [`PullError`].
//! 2. prepare: the runtime validates and compiles the module → [`PrepareError`].
//! 3. volumes: the pod's volumes, set up once for the whole pod → [`MountError`].
//! 4. [`configure`]: argv, environment and mounts ([`ConfigError`]), and the run's log file.
//! 5. [`launch`]: the runtime starts the guest ([`StartError`]), then its exit, hooks and
//!    probes are watched for the supervisor.
//!
//! The supervisor runs the steps in order and turns a [`StartFailure`] into the container's
//! next state in one place.

pub mod configure;
pub mod image;
pub mod launch;

use super::container::ConfigError;
use super::volumes::MountError;
use crate::images::PullError;
use crate::runtime::{PrepareError, StartError};
use std::path::PathBuf;

/// Why a container was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartFailure {
    /// The pod was deleted while the container was being started.
    #[error("the pod was deleted")]
    Deleted,
    /// Its image could not be had.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// Its module cannot run on this node, now or ever.
    #[error("the image's module cannot run on this node: {0}")]
    Prepare(#[from] PrepareError),
    /// The pod's RuntimeClass names no handler this node runs, or could not be read: its
    /// sandbox cannot be made, as containerd's cannot.
    #[error("{0}")]
    RuntimeClass(String),
    /// The pod's own network could not be attached.
    #[error("setting up the pod's network failed: {0}")]
    Network(#[from] crate::cni::CniError),
    /// The pod's DNS configuration could not be formed.
    #[error("forming the pod's DNS configuration failed: {0}")]
    Dns(#[from] crate::pods::dns::DnsError),
    /// The pod's volumes could not be set up.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Its spec asks for what the node cannot give it now.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its log file could not be created.
    #[error("creating log file {}: {source}", .path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The runtime could not start it.
    #[error(transparent)]
    Launch(#[from] StartError),
}
