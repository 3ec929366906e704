//! What a container's pod spec configures for its actor, from its env and mounts: the
//! capabilities of actors whose claims list none, the HTTP port, the blob store's volume.

use crate::capabilities::HTTP_SERVER;
use crate::capabilities::blobstore::BlobStore;
use crate::claims::Claims;
use kubelet::runtime::{ContainerRun, StartError};
use std::collections::BTreeSet;

/// Env naming the capabilities of an actor whose claims list none (newer wasmCloud tokens),
/// comma-separated, e.g. `wascc:http_server,wascc:logging`.
pub const CAPABILITIES: &str = "WASCC_CAPABILITIES";
/// Env naming the port the HTTP server listens on when the container declares no
/// containerPort (default 8080).
pub const PORT: &str = "PORT";
/// Env naming the mountPath of the volume the blob store keeps its containers in.
pub const BLOBSTORE_ROOT: &str = "BLOBSTORE_ROOT";
/// The HTTP server's port when neither a containerPort nor `PORT` names one.
const DEFAULT_HTTP_PORT: u16 = 8080;

/// An actor container's configuration.
#[derive(Debug)]
pub struct ActorConfig {
    /// The capabilities the actor may call.
    pub granted: BTreeSet<String>,
    /// The ports its HTTP server listens on (empty when it has no `wascc:http_server`).
    pub http_ports: Vec<u16>,
    /// Where its blobs live, when configured.
    pub blobstore: Option<BlobStore>,
}

impl ActorConfig {
    /// The configuration of `run` for an actor with `claims`.
    pub fn new(claims: &Claims, run: &ContainerRun) -> Result<Self, StartError> {
        let env = |name: &str| {
            run.env
                .iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let granted: BTreeSet<String> = match &claims.capabilities {
            Some(capabilities) => capabilities.iter().cloned().collect(),
            None => env(CAPABILITIES)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
        };
        let http_ports = if !granted.contains(HTTP_SERVER) {
            Vec::new()
        } else if !run.network.ports.is_empty() {
            run.network.ports.clone()
        } else {
            match env(PORT) {
                Some(port) => vec![port.parse().map_err(|_| {
                    StartError(format!("env {PORT}={port:?} is not a port number"))
                })?],
                None => vec![DEFAULT_HTTP_PORT],
            }
        };
        let blobstore = env(BLOBSTORE_ROOT)
            .map(|root| {
                run.mounts
                    .iter()
                    .find(|m| m.guest_path.trim_end_matches('/') == root.trim_end_matches('/'))
                    .map(|m| BlobStore::new(m.host_path.clone(), m.read_only))
                    .ok_or_else(|| {
                        StartError(format!(
                            "env {BLOBSTORE_ROOT}={root:?} is not the mountPath of any of the container's volumeMounts; mount a volume there"
                        ))
                    })
            })
            .transpose()?;
        Ok(Self {
            granted,
            http_ports,
            blobstore,
        })
    }
}
