//! The embedded default: static pods from manifest files, run with no API server. Statuses and
//! events go to the log, container output to stdout (prefixed with `pod/container`).

use crate::agent::{AgentError, Parts};
use crate::config::Config;
use crate::pods::Supervisors;
use crate::pods::host::{PodEvent, PodHost, StatusError};
use crate::runtime::Runtime;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use kube::ResourceExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file or directory cannot be read.
    #[error("reading pod manifests from {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A document is not a valid Pod.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads pods from a manifest file or a directory of `.yaml`/`.yml`/`.json` files (multi-document
/// YAML allowed); every document must be a v1 Pod.
pub fn load_manifests(path: &Path) -> Result<Vec<Pod>, ManifestError> {
    let mut pods = Vec::new();
    for file in manifest_files(path)? {
        pods.extend(load_manifest_file(&file)?);
    }
    Ok(pods)
}

/// The manifest files at `path`: the file itself, or the `.yaml`/`.yml`/`.json` files of the
/// directory, in name order.
pub fn manifest_files(path: &Path) -> Result<Vec<std::path::PathBuf>, ManifestError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The pods of one manifest file (multi-document YAML allowed; every document a v1 Pod).
pub fn load_manifest_file(file: &Path) -> Result<Vec<Pod>, ManifestError> {
    let mut pods = Vec::new();
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| ManifestError::Read {
        path: name.clone(),
        source,
    })?;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| ManifestError::Invalid {
                path: name.clone(),
                message: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        if kind != "Pod" {
            return Err(ManifestError::Invalid {
                path: name,
                message: format!(
                    "expected kind Pod, found {kind:?}; static pod manifests hold pods only"
                ),
            });
        }
        let pod: Pod = serde_yaml::from_value(value).map_err(|e| ManifestError::Invalid {
            path: name.clone(),
            message: e.to_string(),
        })?;
        if pod.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(ManifestError::Invalid {
                path: name,
                message: "the pod has no metadata.name".into(),
            });
        }
        pods.push(pod);
    }
    Ok(pods)
}

fn random_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Effects of a standalone node: printed, and phases tracked to know when every pod is done.
struct LocalHost {
    phases: watch::Sender<HashMap<String, String>>,
}

impl PodHost for LocalHost {
    async fn write_status(&self, pod: &Pod, status: &PodStatus) -> Result<(), StatusError> {
        let phase = status.phase.clone().unwrap_or_default();
        let states: Vec<String> = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| {
                let st = c.state.clone().unwrap_or_default();
                let what = match (st.waiting, st.running, st.terminated) {
                    (Some(w), _, _) => format!("waiting ({})", w.reason.unwrap_or_default()),
                    (_, Some(_), _) => "running".to_string(),
                    (_, _, Some(t)) => format!(
                        "terminated ({}, exit code {})",
                        t.reason.unwrap_or_default(),
                        t.exit_code
                    ),
                    _ => "unknown".to_string(),
                };
                format!("{}: {what}", c.name)
            })
            .collect();
        let detail = status
            .message
            .clone()
            .map(|m| format!(" - {m}"))
            .unwrap_or_default();
        tracing::info!(pod = %pod.name_any(), "{phase} [{}]{detail}", states.join(", "));
        self.phases.send_modify(|p| {
            p.insert(pod.uid().unwrap_or_default(), phase);
        });
        Ok(())
    }

    async fn record(&self, pod: &Pod, event: PodEvent) {
        let name = pod.name_any();
        let container = event.container.clone().unwrap_or_default();
        if event.kind == "Warning" {
            tracing::warn!(pod = %name, container = %container, reason = %event.reason, "{}", event.message);
        } else {
            tracing::info!(pod = %name, container = %container, reason = %event.reason, "{}", event.message);
        }
    }

    async fn finish_deletion(&self, _pod: &Pod) {}

    async fn runtime_handler(&self, name: &str) -> Result<Option<String>, String> {
        Err(format!(
            "standalone mode has no API server to read RuntimeClass {name:?} from"
        ))
    }

    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<Arc<ConfigMap>>, String> {
        Err(format!(
            "standalone mode has no API server to read configmap {ns}/{name} from"
        ))
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Arc<Secret>>, String> {
        Err(format!(
            "standalone mode has no API server to read secret {ns}/{name} from"
        ))
    }

    async fn service_account_token(
        &self,
        _pod: &Pod,
        _audience: Option<String>,
        _expiration_seconds: i64,
    ) -> Result<String, String> {
        Err("standalone mode has no API server to issue service account tokens; set automountServiceAccountToken: false".into())
    }
}

/// How a standalone run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Pods that ended Failed, by name.
    pub failed: Vec<String>,
}

/// Runs the pods until every one has finished (Succeeded or Failed) or `shutdown`.
pub async fn run<R: Runtime>(
    mut config: Config,
    runtime: R,
    pods: Vec<Pod>,
    shutdown: CancellationToken,
) -> Result<Outcome, AgentError> {
    // No cluster, so no cluster DNS to miss.
    config.dns.standalone = true;
    let mut parts = Parts::new(config, runtime, true)?;
    // Container output goes straight to stdout, each line once.
    parts.logs = Arc::new(crate::logs::LogFiles::stdout());
    let (phases, mut watch_phases) = watch::channel(HashMap::new());
    let host = Arc::new(LocalHost { phases });
    let mut supervisors = Supervisors::new(parts.context(host));
    let mut names = HashMap::new();
    for mut pod in pods {
        let meta = &mut pod.metadata;
        meta.namespace.get_or_insert_with(|| "default".into());
        // Static pods, as the kubelet marks the pods it reads from files.
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(crate::pods::admission::CONFIG_SOURCE.into(), "file".into());
        meta.uid = Some(random_uid());
        meta.creation_timestamp = Some(crate::pods::status::now());
        pod.spec.get_or_insert_with(Default::default).node_name =
            Some(parts.config.node_name.clone());
        names.insert(pod.uid().unwrap_or_default(), pod.name_any());
        supervisors.apply(pod);
    }
    // Networks an earlier run left attached (it was killed) are detached.
    supervisors.sweep_networks();
    let terminal = |p: &HashMap<String, String>| {
        names.keys().all(|uid| {
            p.get(uid)
                .is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
        })
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = watch_phases.wait_for(terminal) => break,
            () = supervisors.reap() => {}
        }
    }
    let phases = watch_phases.borrow().clone();
    for uid in names.keys() {
        supervisors.remove(uid);
    }
    supervisors.join_all().await;
    let mut failed: Vec<String> = names
        .iter()
        .filter(|(uid, _)| phases.get(*uid).is_some_and(|p| p == "Failed"))
        .map(|(_, n)| n.clone())
        .collect();
    failed.sort();
    Ok(Outcome { failed })
}
