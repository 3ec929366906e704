//! Step 4 of a start: what the guest sees (argv, environment with the ConfigMaps and Secrets it
//! names, the directories of its volume mounts) and the run's log file.

use crate::logs::LogFile;
use crate::pods::PodContext;
use crate::pods::container::{self, ConfigError, EnvSources, Process};
use crate::pods::host::PodHost;
use crate::pods::service_env;
use crate::runtime::{Mount, Runtime};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// The container's argv, environment and mounts; `volume_dirs` are the pod's volumes by name,
/// `pod_ips` its IPs (for the downward API).
pub async fn configure<R: Runtime, H: PodHost>(
    ctx: &PodContext<R, H>,
    pod: &Pod,
    spec: &Container,
    volume_dirs: &HashMap<String, PathBuf>,
    pod_ips: &[String],
) -> Result<(Process, Vec<Mount>), ConfigError> {
    let sources = env_sources(&*ctx.host, pod, spec).await?;
    let node = container::NodeContext {
        pod_ips,
        ..ctx.node_context()
    };
    let process = container::process(pod, spec, &node, &sources)?;
    let mounts = container::mounts(pod, spec, volume_dirs, &process)?;
    Ok((process, mounts))
}

/// Reads the ConfigMaps and Secrets the container's environment refers to (a read error
/// counts as absent, and the container retries with backoff) and the Services it gets
/// variables for (the start fails until they have been read once).
async fn env_sources<H: PodHost>(
    host: &H,
    pod: &Pod,
    spec: &Container,
) -> Result<EnvSources, ConfigError> {
    let ns = pod.namespace().unwrap_or_default();
    let services = host.services(&ns).await.map_err(ConfigError)?;
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let (config_maps, secrets) = container::env_references(spec);
    let mut sources = EnvSources {
        services: service_env::variables(&services, &ns, links),
        ..Default::default()
    };
    for name in config_maps {
        let data = host.config_map(&ns, &name).await.ok().flatten().map(|cm| {
            let mut data = cm.data.clone().unwrap_or_default();
            data.extend(decoded(cm.binary_data.as_ref()));
            data
        });
        sources.config_maps.insert(name, data);
    }
    for name in secrets {
        let data = host
            .secret(&ns, &name)
            .await
            .ok()
            .flatten()
            .map(|secret| decoded(secret.data.as_ref()).collect());
        sources.secrets.insert(name, data);
    }
    Ok(sources)
}

/// Binary values as text (invalid UTF-8 replaced), as environment variables carry them.
fn decoded(
    data: Option<&BTreeMap<String, ByteString>>,
) -> impl Iterator<Item = (String, String)> + '_ {
    data.into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
}

/// Opens the log file of the container's run number `restarts` (from 0) under the pod's
/// directory, removing the logs of runs before the previous one (`kubectl logs --previous`
/// reads that one). Returns the file and its path.
pub fn open_log<R: Runtime, H: PodHost>(
    ctx: &PodContext<R, H>,
    pod: &Pod,
    container: &str,
    restarts: i32,
) -> Result<(Arc<LogFile>, PathBuf), super::StartFailure> {
    let dir = ctx
        .pods_dir
        .join(pod.uid().unwrap_or_default())
        .join("logs")
        .join(container);
    if let Err(e) = crate::logs::remove_runs_before(&dir, i64::from(restarts) - 1) {
        tracing::warn!(error = %e, "removing the logs of earlier runs failed");
    }
    let path = dir.join(format!("{restarts}.log"));
    let label = format!("{}/{container}", pod.name_any());
    match ctx.logs.for_container(&path, &label) {
        Ok(log) => Ok((log, path)),
        Err(source) => Err(super::StartFailure::Log { path, source }),
    }
}
