//! What a container's pod spec configures for its actor, from its env and mounts: the
//! capabilities of actors whose claims list none, the HTTP port, the blob store's volume.

use crate::capabilities::HTTP_SERVER;
use crate::capabilities::blobstore::BlobStore;
use crate::claims::Claims;
use kubelet::runtime::{ContainerRun, Mount, StartError};
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
        Self::from_parts(claims, &run.env, &run.mounts, &run.network.ports)
    }

    fn from_parts(
        claims: &Claims,
        env: &[(String, String)],
        mounts: &[Mount],
        ports: &[u16],
    ) -> Result<Self, StartError> {
        let env = |name: &str| {
            env.iter()
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
        } else if !ports.is_empty() {
            ports.to_vec()
        } else {
            match env(PORT) {
                Some(port) => vec![port.parse().map_err(|_| {
                    StartError::Invalid(format!("env {PORT}={port:?} is not a port number"))
                })?],
                None => vec![DEFAULT_HTTP_PORT],
            }
        };
        let blobstore = env(BLOBSTORE_ROOT)
            .map(|root| {
                mounts
                    .iter()
                    .find(|m| m.guest_path.trim_end_matches('/') == root.trim_end_matches('/'))
                    .map(|m| BlobStore::new(m.host_path.clone(), m.read_only))
                    .ok_or_else(|| {
                        StartError::Invalid(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(capabilities: Option<&[&str]>) -> Claims {
        Claims {
            name: "actor".into(),
            issuer: "A".into(),
            subject: "M".into(),
            capabilities: capabilities.map(|c| c.iter().map(|c| c.to_string()).collect()),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn claims_without_capabilities_take_them_from_the_env() {
        let config = ActorConfig::from_parts(
            &claims(None),
            &env(&[
                (CAPABILITIES, "wascc:http_server, wascc:logging"),
                (PORT, "9000"),
            ]),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            config.granted.iter().collect::<Vec<_>>(),
            ["wascc:http_server", "wascc:logging"]
        );
        assert_eq!(config.http_ports, [9000]);
    }

    #[test]
    fn the_claims_decide_over_the_env_and_container_ports_over_port() {
        let config = ActorConfig::from_parts(
            &claims(Some(&["wascc:http_server"])),
            &env(&[(CAPABILITIES, "wascc:keyvalue"), (PORT, "9000")]),
            &[],
            &[8081],
        )
        .unwrap();
        assert_eq!(
            config.granted.iter().collect::<Vec<_>>(),
            ["wascc:http_server"]
        );
        assert_eq!(config.http_ports, [8081]);
        let quiet = ActorConfig::from_parts(&claims(Some(&[])), &[], &[], &[8081]).unwrap();
        assert!(quiet.http_ports.is_empty(), "no http_server, no port");
    }

    #[test]
    fn the_blob_store_root_must_be_a_mount() {
        let mounts = [Mount {
            host_path: "/var/lib/pod/data".into(),
            guest_path: "/data".into(),
            read_only: false,
        }];
        let ok = ActorConfig::from_parts(
            &claims(Some(&[])),
            &env(&[(BLOBSTORE_ROOT, "/data/")]),
            &mounts,
            &[],
        );
        assert!(ok.unwrap().blobstore.is_some());
        let err = ActorConfig::from_parts(
            &claims(Some(&[])),
            &env(&[(BLOBSTORE_ROOT, "/elsewhere")]),
            &mounts,
            &[],
        )
        .unwrap_err();
        assert!(!err.can_retry(), "{err}");
        assert!(err.to_string().contains("not the mountPath"), "{err}");
    }
}
