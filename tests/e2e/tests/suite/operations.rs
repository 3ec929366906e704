//! Installed as a kubelet is: the systemd unit and its kubeadm drop-in in deploy/systemd pass
//! `systemd-analyze verify`, and the drop-in's command line, expanded as systemd expands it
//! with the files `kubeadm join` writes, joins a node to the cluster.

use e2e::{
    Cluster, Provider, agent_binary, bootstrap_kubeconfig, is_node_ready, node_ip, wait_for,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams};
use std::collections::HashMap;
use std::path::Path;

/// The repository's unit files.
fn unit_dir() -> std::path::PathBuf {
    testkit::fixtures::repo_root().join("deploy/systemd")
}

/// Copies the unit and its drop-in into `dir`, with `binary` for the installed binary's path.
fn install_units(dir: &Path, binary: &Path) -> anyhow::Result<std::path::PathBuf> {
    let binary = binary.to_str().expect("utf-8 path");
    let unit = dir.join("krustlet-wasi.service");
    let text = std::fs::read_to_string(unit_dir().join("krustlet-wasi.service"))?;
    std::fs::write(&unit, text.replace("/usr/local/bin/krustlet-wasi", binary))?;
    std::fs::create_dir_all(dir.join("krustlet-wasi.service.d"))?;
    let text = std::fs::read_to_string(unit_dir().join("krustlet-wasi.service.d/10-kubeadm.conf"))?;
    std::fs::write(
        dir.join("krustlet-wasi.service.d/10-kubeadm.conf"),
        text.replace("/usr/local/bin/krustlet-wasi", binary),
    )?;
    Ok(unit)
}

#[test]
fn the_unit_and_its_kubeadm_drop_in_pass_systemd_analyze_verify() -> anyhow::Result<()> {
    let dir = testkit::scratch::tempdir("units")?;
    let unit = install_units(dir.path(), &agent_binary(Provider::Wasi)?)?;
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("krustlet-wasi.service"))
        .collect();
    assert!(about_ours.is_empty(), "{about_ours:?}");
    // What keeps the guests through a restart of the agent.
    let text = std::fs::read_to_string(&unit)?;
    assert!(text.contains("\nKillMode=process\n"), "{text}");
    Ok(())
}

/// The `[Service]` settings of the drop-in: its `Environment=` variables and its last
/// `ExecStart=`.
fn drop_in_service() -> anyhow::Result<(HashMap<String, String>, String)> {
    let text = std::fs::read_to_string(unit_dir().join("krustlet-wasi.service.d/10-kubeadm.conf"))?;
    let mut environment = HashMap::new();
    let mut exec_start = String::new();
    for line in text.lines() {
        if let Some(assignment) = line.strip_prefix("Environment=") {
            let assignment = assignment.trim_matches('"');
            let (name, value) = assignment.split_once('=').expect("NAME=value");
            environment.insert(name.to_string(), value.to_string());
        } else if let Some(command) = line.strip_prefix("ExecStart=") {
            exec_start = command.to_string();
        }
    }
    Ok((environment, exec_start))
}

/// An environment file's `NAME="value"` lines.
fn environment_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(name, value)| (name.to_string(), value.trim_matches('"').to_string()))
        .collect()
}

/// `command` expanded as systemd expands `$NAME` (unquoted: split at whitespace).
fn expand(command: &str, environment: &HashMap<String, String>) -> Vec<String> {
    command
        .split_whitespace()
        .flat_map(|word| match word.strip_prefix('$') {
            Some(name) => environment
                .get(name)
                .map(|value| value.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            None => vec![word.to_string()],
        })
        .collect()
}

#[tokio::test]
async fn the_kubeadm_drop_in_joins_the_node_with_the_files_kubeadm_writes() -> anyhow::Result<()> {
    let cluster = Cluster::new("kubeadm-join").await?;
    let root = testkit::scratch::tempdir("kubeadm-join")?;
    // Where kubeadm would write, moved under the test's directory.
    let etc_kubernetes = root.path().join("etc-kubernetes");
    let var_lib_kubelet = root.path().join("var-lib-kubelet");
    std::fs::create_dir_all(etc_kubernetes.join("manifests"))?;
    std::fs::create_dir_all(&var_lib_kubelet)?;
    let bootstrap = bootstrap_kubeconfig(&cluster, root.path()).await?;
    std::fs::copy(&bootstrap, etc_kubernetes.join("bootstrap-kubelet.conf"))?;
    std::fs::write(etc_kubernetes.join("ca.crt"), e2e::cluster_ca()?)?;
    let [healthz_port] = e2e::free_ports()?;
    std::fs::write(
        var_lib_kubelet.join("config.yaml"),
        e2e::kubeadm_kubelet_config(
            &etc_kubernetes.join("ca.crt"),
            &etc_kubernetes.join("manifests"),
            healthz_port,
        )?,
    )?;
    // kubeadm 1.32's kubeadm-flags.env, and an operator's extra flags (the node's name, IP and
    // ports on a machine the test shares).
    std::fs::write(
        var_lib_kubelet.join("kubeadm-flags.env"),
        "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10\"\n",
    )?;
    let name = format!("joined-{}", cluster.id);
    let port = testkit::registry::free_port()?;
    let extra = format!(
        "KUBELET_EXTRA_ARGS=\"--hostname-override={name} --node-ip={} --port={port} --insecure-registries={} --cni-conf-dir={} --runtime-workers=0\"\n",
        node_ip(),
        cluster.registry(),
        root.path().join("no-cni").display(),
    );
    let (mut environment, exec_start) = drop_in_service()?;
    environment.extend(environment_file(&extra));
    environment.extend(environment_file(&std::fs::read_to_string(
        var_lib_kubelet.join("kubeadm-flags.env"),
    )?));
    let relocate = |text: &str| {
        text.replace(
            "/etc/kubernetes",
            etc_kubernetes.to_str().expect("utf-8 path"),
        )
        .replace(
            "/var/lib/kubelet",
            var_lib_kubelet.to_str().expect("utf-8 path"),
        )
        .replace(
            "/var/lib/krustlet-wasi",
            root.path().join("root").to_str().expect("utf-8 path"),
        )
    };
    let argv: Vec<String> = expand(&exec_start, &environment)
        .iter()
        .map(|arg| relocate(arg))
        .collect();
    assert_eq!(argv[0], "/usr/local/bin/krustlet-wasi", "{argv:?}");
    let log_path = root.path().join("agent.log");
    let mut command = std::process::Command::new(agent_binary(Provider::Wasi)?);
    command
        .args(&argv[1..])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?);
    let _agent = e2e::KilledOnDrop(testkit::process::spawn_owned(command)?);
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let joined = wait_for(nodes.clone(), &name, is_node_ready()).await;
    let log = std::fs::read_to_string(&log_path)?;
    joined.map_err(|e| anyhow::anyhow!("{e}: agent log:\n{log}"))?;
    // As the kubelet: its own kubeconfig where --kubeconfig says, the health endpoint kubeadm
    // waits on, the CRI flags noted and ignored.
    let kubeconfig = std::fs::read_to_string(etc_kubernetes.join("kubelet.conf"))?;
    assert!(kubeconfig.contains("client-certificate"), "{kubeconfig}");
    let (code, body) = cluster.wait_healthz(healthz_port).await?;
    assert_eq!((code, body.as_str()), (200, "ok"));
    assert!(log.contains("--pod-infra-container-image"), "{log}");
    let _ = nodes.delete(&name, &DeleteParams::default()).await;
    Ok(())
}
