//! `--config`: the node reads the kubelet's configuration file as kubeadm writes it, with its
//! own settings beside it in the same file; flags win over the file; a bad file stops the start
//! naming the field.

use e2e::{Cluster, Provider, is_running_after_restarts, run_binary, wasm_pod};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

/// kubeadm's configuration file with the pod capacity and Lease duration a test can see, and
/// this node's own settings beside it.
fn kubeadm_config(static_pod_path: &std::path::Path, healthz_port: u16) -> anyhow::Result<String> {
    // The harness's own --client-ca-file wins over the file's.
    let kubeadm = e2e::kubeadm_kubelet_config(
        std::path::Path::new("/etc/kubernetes/pki/ca.crt"),
        static_pod_path,
        healthz_port,
    )?;
    Ok(format!(
        "{kubeadm}maxPods: 33\nnodeLeaseDurationSeconds: 60\n---\napiVersion: krustlet.dev/v1alpha1\nkind: KrustletConfiguration\nfileCheckFrequency: 2s\nnodeLabels:\n- example.com/from-file=yes\n"
    ))
}

#[tokio::test]
async fn a_kubeadm_configuration_file_configures_the_node_and_flags_win_over_it()
-> anyhow::Result<()> {
    let cluster = Cluster::new("config-file").await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let dir = testkit::scratch::tempdir("config-file")?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    let mut manifest = wasm_pod("web", &image, "", &["forever"], "Always");
    manifest.metadata.namespace = Some(cluster.namespace.clone());
    let spec = manifest.spec.as_mut().expect("spec");
    spec.node_name = None;
    spec.tolerations = None;
    std::fs::write(manifests.join("web.json"), serde_json::to_vec(&manifest)?)?;
    let [healthz_port] = e2e::free_ports()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, kubeadm_config(&manifests, healthz_port)?)?;
    // The harness's own flags (its client CA among them) win over the file's, and so does
    // this one: the file's labels are replaced by the command line's, as on the kubelet.
    let agent = cluster
        .start_node_with(&[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--node-labels",
            "example.com/from-flag=yes",
        ])
        .await?;
    let node = Api::<Node>::all(cluster.client.clone())
        .get(&agent.name)
        .await?;
    let pods = node
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("pods"))
        .map(|q| q.0.clone());
    assert_eq!(pods.as_deref(), Some("33"), "maxPods from the file");
    let labels = node.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("example.com/from-flag").map(String::as_str),
        Some("yes")
    );
    assert!(
        !labels.contains_key("example.com/from-file"),
        "the flag replaced the file's labels: {labels:?}"
    );
    // nodeLeaseDurationSeconds.
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        cluster.client.clone(),
        "kube-node-lease",
    );
    let duration = cluster
        .eventually("the node's Lease", async || {
            Ok(lease
                .get_opt(&agent.name)
                .await?
                .and_then(|l| l.spec?.lease_duration_seconds))
        })
        .await?;
    assert_eq!(duration, 60);
    // staticPodPath: the static pod runs, mirrored.
    cluster
        .wait_pod(
            &format!("web-{}", agent.name),
            "mirrored and running",
            is_running_after_restarts(0),
        )
        .await?;
    // The health endpoint kubeadm waits on, where the file puts it.
    let (code, body) = cluster.wait_healthz(healthz_port).await?;
    assert_eq!((code, body.as_str()), (200, "ok"));
    // What does not apply here is named once, in one line.
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("do not apply to this node"))
        .unwrap_or_default();
    assert!(line.contains("cgroupDriver=systemd"), "{log}");
    assert!(!line.contains("maxPods") && !line.contains("0s"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_field_of_the_wrong_type_stops_the_start_naming_it() -> anyhow::Result<()> {
    let dir = testkit::scratch::tempdir("config-file-bad")?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: lots\n",
    )?;
    let output = run_binary(
        Provider::Wasi,
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--standalone".as_ref(),
        ],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("field maxPods"), "{stderr}");
    assert!(stderr.contains("'lots'"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn json_logs_parse_and_carry_each_pods_fields() -> anyhow::Result<()> {
    let cluster = Cluster::new("json-logs").await?;
    let agent = cluster
        .start_node_with(&["--logging-format", "json", "-v", "4"])
        .await?;
    let image = cluster.push_guest("wasi-probe").await?;
    cluster.run_forever("logged", &image, &agent.name).await?;
    let line = cluster
        .eventually("a line about the pod in the agent's log", async || {
            let log = agent.log();
            for line in log.lines() {
                let parsed: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| anyhow::anyhow!("{e}: a line that is not JSON: {line:?}"))?;
                if parsed["pod"] == "logged" {
                    return Ok(Some(parsed));
                }
            }
            Ok(None)
        })
        .await?;
    assert_eq!(line["namespace"], cluster.namespace.as_str(), "{line}");
    assert!(
        line["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{line}"
    );
    assert!(line["msg"].is_string() && line["ts"].is_string(), "{line}");
    assert!(
        !agent.log().contains('\u{1b}'),
        "no escape codes in a log file"
    );
    Ok(())
}
