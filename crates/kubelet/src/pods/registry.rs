//! The pods this node runs, as the kubelet API serves them: the latest pod object, each
//! container's log files, and the usage of the containers running now.

use super::admission::{self, Active, HostPort, Rejection};
use super::resources::{Requests, pod_requests};
use crate::runtime::Usage;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};

/// One container's log files.
#[derive(Debug, Clone, Default)]
pub struct ContainerLogs {
    /// The current (or last) run's log.
    pub current: Option<PathBuf>,
    /// The run before it (`kubectl logs --previous`).
    pub previous: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Entry {
    pod: Pod,
    /// The pod's CPU and memory requests (a pod's resources do not change).
    requests: Requests,
    /// The host ports it asks for (neither do its ports).
    host_ports: Vec<HostPort>,
    logs: HashMap<String, ContainerLogs>,
    /// Per container: when its current run started, and its usage while the guest lives.
    usage: HashMap<String, (jiff::Timestamp, Weak<Usage>)>,
}

/// A running container's usage, for the Summary API.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    /// The container's name.
    pub name: String,
    /// When its current run started.
    pub started: jiff::Timestamp,
    /// What it uses.
    pub usage: Arc<Usage>,
}

/// Pods known to the node, by namespace and name.
#[derive(Debug, Default)]
pub struct PodRegistry {
    pods: RwLock<BTreeMap<(String, String), Entry>>,
}

impl PodRegistry {
    /// Records the latest version of a pod.
    pub fn upsert(&self, ns: &str, name: &str, pod: Pod) {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        let entry = pods
            .entry((ns.into(), name.into()))
            .or_insert_with(|| Entry {
                requests: pod_requests(&pod),
                host_ports: admission::host_ports(&pod),
                pod: pod.clone(),
                logs: HashMap::new(),
                usage: HashMap::new(),
            });
        entry.pod = pod;
    }

    /// Records a container's new log file.
    pub fn new_log(&self, ns: &str, name: &str, container: &str, path: PathBuf) {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = pods.get_mut(&(ns.into(), name.into())) {
            let logs = entry.logs.entry(container.into()).or_default();
            logs.previous = logs.current.replace(path);
        }
    }

    /// Records a container's new run; its usage is reported while the runtime keeps it alive.
    pub fn started(&self, ns: &str, name: &str, container: &str, usage: Arc<Usage>) {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = pods.get_mut(&(ns.into(), name.into())) {
            entry.usage.insert(
                container.into(),
                (jiff::Timestamp::now(), Arc::downgrade(&usage)),
            );
        }
    }

    /// Every pod with the usage of its running containers.
    pub fn usage(&self) -> Vec<(Pod, Vec<ContainerUsage>)> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.values()
            .map(|entry| {
                let mut running: Vec<ContainerUsage> = entry
                    .usage
                    .iter()
                    .filter_map(|(name, (started, usage))| {
                        Some(ContainerUsage {
                            name: name.clone(),
                            started: *started,
                            usage: usage.upgrade()?,
                        })
                    })
                    .collect();
                running.sort_by(|a, b| a.name.cmp(&b.name));
                (entry.pod.clone(), running)
            })
            .collect()
    }

    /// Forgets a pod.
    pub fn remove(&self, ns: &str, name: &str) {
        self.pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ns.into(), name.into()));
    }

    /// The pod and a container's logs, if known.
    pub fn logs(
        &self,
        ns: &str,
        name: &str,
        container: &str,
    ) -> Option<(Pod, Option<ContainerLogs>)> {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        pods.get(&(ns.into(), name.into()))
            .map(|e| (e.pod.clone(), e.logs.get(container).cloned()))
    }

    /// Every pod.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|e| e.pod.clone())
            .collect()
    }

    /// Admits `pod` by `check` against what the other pods still running or due to run (not
    /// Succeeded or Failed) use, and records it if admitted: one step under the registry's
    /// lock, so that two pods admitted at once cannot both take the last place or port.
    pub fn admit(
        &self,
        ns: &str,
        name: &str,
        pod: &Pod,
        check: impl FnOnce(&Active) -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        let uid = pod.metadata.uid.as_deref();
        let mut active = Active::default();
        for entry in pods
            .values()
            .filter(|e| e.pod.metadata.uid.as_deref() != uid)
        {
            let finished = matches!(
                entry.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            if !finished {
                active.pods += 1;
                active.requests = active.requests + entry.requests;
                active.host_ports.extend(entry.host_ports.iter().cloned());
            }
        }
        check(&active)?;
        pods.insert(
            (ns.into(), name.into()),
            Entry {
                requests: pod_requests(pod),
                host_ports: admission::host_ports(pod),
                pod: pod.clone(),
                logs: HashMap::new(),
                usage: HashMap::new(),
            },
        );
        Ok(())
    }
}
