//! Pod networking through CNI, as containerd does it for the kubelet: each pod that needs a
//! network gets a network namespace of its own (pinned at `<data-dir>/netns/<pod uid>`), which
//! the node's CNI plugins (`--cni-conf-dir`, `--cni-bin-dir`) attach with ADD, give the pod its
//! IP(s), and detach with DEL when the pod is removed.
//!
//! Every attachment is recorded beside its namespace (`<uid>.json`: the network configuration
//! used, the hostPorts asked for and the result), before ADD runs and after it succeeds, so that
//! a restarted agent finds the pods' networks again, and DEL runs with what ADD was given even
//! after the configuration changed. Attachments no pod claims are detached by [`PodNetworks::sweep`].

pub mod config;
pub mod plugin;

use crate::netns;
use config::NetworkConfig;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use plugin::{Attachment, Command};
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The interface each pod's network gives it, as on every Kubernetes node.
pub const POD_INTERFACE: &str = "eth0";

/// Pods whose plugins run at once (ADD, CHECK or DEL); the others wait their turn. Each plugin
/// is a process of some 10-20 MiB: a thousand pods created at once must not fork a thousand.
pub const MAX_PARALLEL_ATTACHMENTS: usize = 8;

/// Why a pod's network could not be set up or taken down.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A configuration file could not be read.
    #[error("reading CNI configuration {}: {source}", .path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is not a valid network configuration.
    #[error("CNI configuration {} is invalid: {why}", .path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A plugin failed.
    #[error("CNI plugin {plugin} failed {command}: {why}")]
    Plugin {
        /// The plugin's type.
        plugin: String,
        /// ADD, CHECK or DEL.
        command: &'static str,
        /// What it said, or what went wrong running it.
        why: String,
    },
    /// The pod's namespace or record could not be made or removed.
    #[error("{what}: {source}")]
    Files {
        /// What was being done.
        what: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// ADD succeeded but gave the pod no IP address.
    #[error("the CNI network {0} gave the pod no IP address; its IPAM plugin must assign one")]
    NoAddress(String),
}

impl CniError {
    fn files(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Files { what, source }
    }
}

/// A pod's network: its namespace and its IPs.
#[derive(Debug, Clone, PartialEq)]
pub struct PodAddress {
    /// Where its network namespace is pinned.
    pub netns: PathBuf,
    /// Its IP addresses, the primary first.
    pub ips: Vec<IpAddr>,
}

/// What is kept of an attachment, for its DEL.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// `namespace/name` of the pod, for people reading the directory.
    pod: String,
    /// The network configuration list ADD was given.
    network: Value,
    /// The hostPorts asked for (the `portMappings` capability).
    port_mappings: Vec<Value>,
    /// CNI_ARGS ADD was given.
    args: String,
    /// The final result of ADD; none while ADD has not finished.
    result: Option<Value>,
}

/// The node's CNI network and the pods attached to it.
pub struct PodNetworks {
    network: NetworkConfig,
    bin_dirs: Vec<PathBuf>,
    /// `<data-dir>/netns`: a namespace file and a record per pod.
    dir: PathBuf,
    /// Turns to run plugins ([`MAX_PARALLEL_ATTACHMENTS`]).
    turns: tokio::sync::Semaphore,
    /// How long each plugin call may take.
    plugin_timeout: std::time::Duration,
}

impl PodNetworks {
    /// The network configured in `conf_dir` (`None` when there is none: pods then use the
    /// node's network), with plugins in `bin_dirs`, each call given `plugin_timeout`, and pods'
    /// namespaces in `dir`.
    pub fn load(
        conf_dir: &Path,
        bin_dirs: Vec<PathBuf>,
        plugin_timeout: std::time::Duration,
        dir: PathBuf,
    ) -> Result<Option<Self>, CniError> {
        let Some(network) = config::load(conf_dir) else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir)
            .map_err(CniError::files(format!("creating {}", dir.display())))?;
        Ok(Some(Self {
            network,
            bin_dirs,
            dir,
            turns: tokio::sync::Semaphore::new(MAX_PARALLEL_ATTACHMENTS),
            plugin_timeout,
        }))
    }

    /// The network's name and where it was read from, for logs and the node's status.
    pub fn describe(&self) -> String {
        format!(
            "CNI network {} from {}",
            self.network.name,
            self.network.source.display()
        )
    }

    fn netns_path(&self, uid: &str) -> PathBuf {
        self.dir.join(uid)
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    fn read_record(&self, uid: &str) -> Option<Record> {
        let text = std::fs::read(self.record_path(uid)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write_record(&self, uid: &str, record: &Record) -> Result<(), CniError> {
        let path = self.record_path(uid);
        let what = format!("writing {}", path.display());
        let text = serde_json::to_vec(record).expect("a record is JSON");
        let tmp = self.dir.join(format!(".{uid}.json.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(CniError::files(what))
    }

    /// Attaches `pod` to the network (idempotent: a pod attached before, also by an earlier
    /// agent, keeps its namespace and IPs, which CHECK confirms where the network allows).
    pub async fn attach(&self, pod: &Pod) -> Result<PodAddress, CniError> {
        let uid = checked_uid(pod)?;
        let netns = self.netns_path(&uid);
        if let Some(Record {
            result: Some(result),
            network,
            port_mappings,
            args,
            ..
        }) = self.read_record(&uid)
            && netns::is_namespace(&netns)
        {
            let network = parse_recorded(&network, &self.network);
            if !network.disable_check && supports_check(&network.cni_version) {
                let _turn = self.turn().await;
                let who = self.attachment(&uid, &netns, &args);
                if let Err(e) = run_chain(
                    Command::Check,
                    &network,
                    &who,
                    &port_mappings,
                    Some(&result),
                )
                .await
                {
                    tracing::warn!(error = %e, "the pod's network is not as it was set up");
                }
            }
            return address(&netns, &result, &network.name);
        }
        // A half-made attachment (an agent stopped during ADD) is undone first.
        self.detach(&uid).await?;
        let args = cni_args(pod, &uid);
        let port_mappings = port_mappings(pod);
        let mut record = Record {
            pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
            network: self.network.to_value(),
            port_mappings: port_mappings.clone(),
            args: args.clone(),
            result: None,
        };
        self.write_record(&uid, &record)?;
        netns::create(&netns).map_err(CniError::files(format!(
            "making network namespace {}",
            netns.display()
        )))?;
        let who = self.attachment(&uid, &netns, &args);
        let added = async {
            let _turn = self.turn().await;
            run_loopback(Command::Add, &who).await?;
            run_chain(Command::Add, &self.network, &who, &port_mappings, None).await
        }
        .await;
        let result = match added {
            Ok(result) => result,
            Err(e) => {
                if let Err(undo) = self.detach(&uid).await {
                    tracing::warn!(error = %undo, "undoing a failed CNI ADD failed");
                }
                return Err(e);
            }
        };
        let address = address(&netns, &result, &self.network.name)?;
        record.result = Some(result);
        self.write_record(&uid, &record)?;
        Ok(address)
    }

    /// Detaches pod `uid` from the network (DEL with what ADD was given), ends its namespace and
    /// forgets it. Nothing attached is no error; a failed DEL keeps the record for a later
    /// [`sweep`](Self::sweep).
    pub async fn detach(&self, uid: &str) -> Result<(), CniError> {
        let netns = self.netns_path(uid);
        if let Some(record) = self.read_record(uid) {
            let _turn = self.turn().await;
            let network = parse_recorded(&record.network, &self.network);
            let who = self.attachment(uid, &netns, &record.args);
            run_chain(
                Command::Del,
                &network,
                &who,
                &record.port_mappings,
                record.result.as_ref(),
            )
            .await?;
            run_loopback(Command::Del, &who).await?;
        }
        netns::remove(&netns).map_err(CniError::files(format!(
            "removing network namespace {}",
            netns.display()
        )))?;
        let record = self.record_path(uid);
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::files(format!("removing {}", record.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Detaches every pod attached on this node whose uid is not in `pods` (removed while no
    /// agent ran, or whose DEL failed before). Attachments recorded since `since` are left
    /// alone: their pods came after `pods` was taken. (A record is written before its
    /// namespace is made and removed after it is gone, so the records name every attachment.)
    pub async fn sweep(&self, pods: &HashSet<String>, since: std::time::SystemTime) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let attached: HashSet<String> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|modified| modified < since)
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
            .collect();
        for uid in attached.difference(pods) {
            match self.detach(uid).await {
                Ok(()) => tracing::info!(uid, "detached the network of a pod that is gone"),
                Err(e) => {
                    tracing::warn!(uid, error = %e, "detaching the network of a pod that is gone failed; trying again at the next sweep")
                }
            }
        }
    }

    /// A turn to run plugins (the semaphore is never closed).
    async fn turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.turns
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    fn attachment<'a>(&'a self, uid: &'a str, netns: &'a Path, args: &'a str) -> Attachment<'a> {
        Attachment {
            container_id: uid,
            netns,
            ifname: POD_INTERFACE,
            args,
            bin_dirs: &self.bin_dirs,
            timeout: self.plugin_timeout,
        }
    }
}

/// The pod's uid, checked to be a file name.
fn checked_uid(pod: &Pod) -> Result<String, CniError> {
    let uid = pod.uid().unwrap_or_default();
    let valid = !uid.is_empty()
        && uid.len() <= 64
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !uid.starts_with('-');
    if !valid {
        return Err(CniError::Files {
            what: format!("the pod's uid {uid:?} cannot name its network namespace"),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    Ok(uid)
}

/// `CNI_ARGS` for `pod`, as the kubelet's runtimes pass them (a name that is not a DNS name,
/// which the API server would not have let through, is left out rather than passed on).
fn cni_args(pod: &Pod, uid: &str) -> String {
    let safe = |value: String| {
        if value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            value
        } else {
            String::new()
        }
    };
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={uid};K8S_POD_UID={uid}",
        safe(pod.namespace().unwrap_or_default()),
        safe(pod.name_any())
    )
}

/// The network a record was attached with (the current one if the record's cannot be read).
fn parse_recorded(value: &Value, current: &NetworkConfig) -> NetworkConfig {
    let text = serde_json::to_vec(value).unwrap_or_default();
    NetworkConfig::parse(&text, true, &current.source).unwrap_or_else(|_| current.clone())
}

/// CHECK exists from CNI 0.4.0.
fn supports_check(version: &str) -> bool {
    !matches!(version, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1")
}

/// Whether a DEL or CHECK is given the ADD result (`prevResult`, from CNI 0.4.0).
fn takes_prev_result(version: &str) -> bool {
    supports_check(version)
}

/// The pod's address from an ADD result: its first IP of each family, in the result's order
/// (the API server takes at most one pod IP per family, as the kubelet reports them).
fn address(netns: &Path, result: &Value, network: &str) -> Result<PodAddress, CniError> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in plugin::addresses(result) {
        if !ips.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        return Err(CniError::NoAddress(network.to_string()));
    }
    Ok(PodAddress {
        netns: netns.to_path_buf(),
        ips,
    })
}

/// The hostPorts of the pod's containers, as the `portmap` plugin's `portMappings`.
fn port_mappings(pod: &Pod) -> Vec<Value> {
    let spec = pod.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| {
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                "hostIP": p.host_ip.as_deref().unwrap_or(""),
            })
        })
        .collect()
}

/// Runs `command` through the network's plugins: ADD in order, each given the one before's
/// result; DEL in reverse; CHECK in order. Returns ADD's final result.
async fn run_chain(
    command: Command,
    network: &NetworkConfig,
    who: &Attachment<'_>,
    port_mappings: &[Value],
    added: Option<&Value>,
) -> Result<Value, CniError> {
    let mut plugins: Vec<&Map<String, Value>> = network.plugins.iter().collect();
    if command == Command::Del {
        plugins.reverse();
    }
    let mut previous = match command {
        Command::Add => None,
        _ if takes_prev_result(&network.cni_version) => added.cloned(),
        _ => None,
    };
    for plugin in plugins {
        let mut config = plugin.clone();
        config.insert("name".into(), network.name.clone().into());
        config.insert("cniVersion".into(), network.cni_version.clone().into());
        let wants_ports = plugin
            .get("capabilities")
            .and_then(|c| c.get("portMappings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if wants_ports {
            config.insert(
                "runtimeConfig".into(),
                json!({ "portMappings": port_mappings }),
            );
        }
        if let Some(previous) = &previous {
            config.insert("prevResult".into(), previous.clone());
        }
        if let Some(result) = plugin::call(command, &config, who).await? {
            previous = Some(result);
        }
    }
    Ok(previous.unwrap_or(Value::Null))
}

/// Brings the pod's loopback interface up (or takes it down) with the `loopback` plugin, as
/// containerd does, when the bin dirs have it.
async fn run_loopback(command: Command, who: &Attachment<'_>) -> Result<(), CniError> {
    if !who.bin_dirs.iter().any(|d| d.join("loopback").is_file()) {
        return Ok(());
    }
    let config = json!({"cniVersion": "0.3.1", "name": "cni-loopback", "type": "loopback"});
    let lo = Attachment {
        ifname: "lo",
        ..who.clone()
    };
    plugin::call(command, config.as_object().expect("an object"), &lo).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_become_port_mappings_and_names_stay_out_of_other_args() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web;K8S_POD_UID=x", "namespace": "prod", "uid": "u-1"},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 8080, "hostPort": 18080, "protocol": "TCP"},
                {"containerPort": 9090}
            ]}]}
        }))
        .unwrap();
        assert_eq!(
            port_mappings(&pod),
            vec![
                json!({"hostPort": 18080, "containerPort": 8080, "protocol": "tcp", "hostIP": ""})
            ]
        );
        assert_eq!(
            cni_args(&pod, "u-1"),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=;K8S_POD_INFRA_CONTAINER_ID=u-1;K8S_POD_UID=u-1"
        );
        let result = json!({"ips": [
            {"address": "10.1.0.5/24"}, {"address": "10.2.0.5/24"}, {"address": "fd00::5/64"}
        ]});
        let address = address(Path::new("/n"), &result, "net").unwrap();
        assert_eq!(
            address.ips,
            [
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ],
            "one IP per family"
        );
        let mut odd = pod.clone();
        odd.metadata.uid = Some("../etc".into());
        assert!(checked_uid(&odd).is_err());
    }
}
