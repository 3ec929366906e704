//! Pods' name lookups follow their DNS policy, as on any node: ClusterFirst asks the cluster's
//! DNS (`--cluster-dns`) through `<namespace>.svc.<domain>` and the other search domains,
//! Default asks what `--resolv-conf` names, None only the pod's `dnsConfig`; `hostAliases`
//! resolve without asking; limits exceeded give a DNSConfigForming event. Guests' sockets and
//! outgoing HTTP requests resolve the same way, and a pod with its own IP asks from it.
//!
//! The name server is the test's own, on port 53 of a loopback address of this machine (so,
//! like the CNI tests, these need root); the agent runs on this machine too, also against a
//! real cluster.

use e2e::cni::TestNetwork;
use e2e::{Cluster, has_phase, http_get, http_pod, wasm_pod};
use k8s_openapi::api::core::v1::Pod;
use std::net::{IpAddr, SocketAddr};
use testkit::dns::DnsServer;

/// A loopback address of this test run's own, for its name server.
fn name_server_ip() -> IpAddr {
    let pid = std::process::id();
    IpAddr::from([127, 53, (pid >> 8) as u8, (pid % 250) as u8 + 1])
}

/// `pod` with `spec` merged into its spec, and allowed to reach anything (so its guests may
/// resolve names and connect).
fn with_spec(pod: Pod, spec: serde_json::Value) -> anyhow::Result<Pod> {
    let mut value = serde_json::to_value(pod)?;
    if let (Some(into), Some(extra)) = (value["spec"].as_object_mut(), spec.as_object()) {
        into.extend(extra.clone());
    }
    value["metadata"]["annotations"] =
        serde_json::json!({"krustlet.dev/allowed-outbound-hosts": "*"});
    Ok(serde_json::from_value(value)?)
}

/// Runs `pod` to completion and returns its log.
async fn run(cluster: &Cluster, pod: Pod) -> anyhow::Result<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    cluster.create_pod(pod).await?;
    let done = cluster
        .wait_pod(&name, "finished", |p: Option<&Pod>| {
            let phase = p.and_then(|p| p.status.as_ref()?.phase.clone());
            matches!(phase.as_deref(), Some("Succeeded" | "Failed"))
        })
        .await?;
    let logs = cluster.kubectl(&["logs", &name])?;
    let phase = done.status.and_then(|s| s.phase);
    anyhow::ensure!(
        phase.as_deref() == Some("Succeeded"),
        "pod {name} ended {phase:?}: {logs}"
    );
    Ok(logs)
}

#[tokio::test]
async fn names_resolve_by_the_pods_dns_policy() -> anyhow::Result<()> {
    let cluster = Cluster::new("dns").await?;
    let ns = cluster.namespace.clone();
    let (port, _echo) = e2e::peer_echo_server().await?;
    let loopback: IpAddr = [127, 0, 0, 1].into();
    let cluster_name = format!("web.{ns}.svc.cluster.local");
    let server = DnsServer::start(
        SocketAddr::new(name_server_ip(), 53),
        &[
            (cluster_name.as_str(), loopback),
            ("db.corp.example", loopback),
            ("api.none.example", loopback),
        ],
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        format!("nameserver {}\nsearch corp.example\n", server.addr().ip()),
    )?;
    let flags = [
        "--cluster-dns".to_string(),
        server.addr().ip().to_string(),
        "--cluster-domain".into(),
        "cluster.local".into(),
        "--resolv-conf".into(),
        resolv_conf.display().to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = cluster.start_node_with(&flags).await?;
    let probe = cluster.push_component("wasi-probe").await?;
    let connect = |name: &str, host: &str| {
        wasm_pod(
            name,
            &probe,
            &agent.name,
            &["connect", &format!("{host}:{port}")],
            "Never",
        )
    };
    let answered = "HTTP/1.1 200 127.0.0.1";

    // ClusterFirst (the API server's default): the service's short name resolves through the
    // namespace's search domain at the cluster's DNS. Four name servers are one too many: the
    // pod gets the first three, and an event says so.
    let pod = with_spec(
        connect("cluster-first", "web"),
        serde_json::json!({"dnsConfig": {"nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3"]}}),
    )?;
    let logs = run(&cluster, pod).await?;
    assert_eq!(logs.trim(), answered);
    let stored = cluster.pods().get("cluster-first").await?;
    assert_eq!(
        stored.spec.and_then(|s| s.dns_policy).as_deref(),
        Some("ClusterFirst"),
        "the API server stores the default policy of a pod that names none"
    );
    assert_eq!(
        server.names_asked().first(),
        Some(&cluster_name),
        "ndots:5 puts the namespace's search domain first"
    );
    let events = cluster
        .wait_events("cluster-first", &["DNSConfigForming"])
        .await?;
    let forming = events.iter().find(|e| e.contains("DNSConfigForming"));
    assert!(
        forming.is_some_and(|e| e.contains(&format!("{} 192.0.2.1 192.0.2.2", server.addr().ip()))),
        "{events:?}"
    );

    // Default: the node's resolver configuration, with its search domain.
    let pod = with_spec(
        connect("node-default", "db"),
        serde_json::json!({"dnsPolicy": "Default"}),
    )?;
    assert_eq!(run(&cluster, pod).await?.trim(), answered);
    assert!(
        !server
            .names_asked()
            .iter()
            .any(|n| n.starts_with("db.") && n.contains(".svc.")),
        "a Default pod has no cluster search domains: {:?}",
        server.names_asked()
    );

    // None: only what the pod's dnsConfig says.
    let pod = with_spec(
        connect("none", "api"),
        serde_json::json!({
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": [server.addr().ip().to_string()], "searches": ["none.example"]}
        }),
    )?;
    assert_eq!(run(&cluster, pod).await?.trim(), answered);

    // hostAliases resolve without asking any name server.
    let pod = with_spec(
        connect("aliases", "aliased.internal"),
        serde_json::json!({"hostAliases": [{"ip": "127.0.0.1", "hostnames": ["aliased.internal"]}]}),
    )?;
    assert_eq!(run(&cluster, pod).await?.trim(), answered);
    assert!(
        !server.names_asked().iter().any(|n| n.contains("aliased")),
        "{:?}",
        server.names_asked()
    );

    // Outgoing HTTP requests resolve through the pod's configuration too.
    let server_image = cluster.push_component("http_probe").await?;
    let [web_port] = e2e::free_ports()?;
    let web = with_spec(
        http_pod(
            "fetcher",
            &server_image,
            &agent.name,
            web_port,
            serde_json::json!({}),
        ),
        serde_json::json!({}),
    )?;
    cluster.create_pod(web).await?;
    cluster
        .wait_pod("fetcher", "Ready", e2e::is_pod_ready())
        .await?;
    let (code, body) = http_get(web_port, &format!("/fetch/web:{port}/")).await?;
    assert_eq!((code, body.as_str()), (200, "fetched 200: 127.0.0.1"));
    let (code, body) = http_get(web_port, &format!("/fetch/nowhere:{port}/")).await?;
    assert_eq!(code, 502, "a name nobody knows fails the request: {body}");
    Ok(())
}

#[tokio::test]
async fn a_pod_with_its_own_ip_asks_from_it() -> anyhow::Result<()> {
    let network = TestNetwork::new("e2e-dns")?;
    let cluster = Cluster::new("dns-cni").await?;
    let gateway: IpAddr = network.gateway().parse()?;
    let (port, _echo) = e2e::peer_echo_server().await?;
    // On the bridge's address, which the pod's namespace reaches through its veth.
    let server = DnsServer::start(
        SocketAddr::new(gateway, 53),
        &[("echo.cluster.test", gateway)],
    )
    .await?;
    let mut flags = network.flags();
    flags.extend([
        "--cluster-dns".into(),
        gateway.to_string(),
        "--cluster-domain".into(),
        "cluster.test".into(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = cluster.start_node_with(&flags).await?;
    let probe = cluster.push_component("wasi-probe").await?;
    let pod = with_spec(
        wasm_pod(
            "own-ip",
            &probe,
            &agent.name,
            &["connect", &format!("echo.cluster.test:{port}")],
            "Never",
        ),
        serde_json::json!({}),
    )?;
    let logs = run(&cluster, pod).await?;
    let done = cluster
        .wait_pod("own-ip", "Succeeded", has_phase("Succeeded"))
        .await?;
    let pod_ip: IpAddr = done
        .status
        .and_then(|s| s.pod_ip)
        .unwrap_or_default()
        .parse()?;
    assert_eq!(logs.trim(), format!("HTTP/1.1 200 {pod_ip}"));
    let asked = server.asked();
    assert!(
        !asked.is_empty() && asked.iter().all(|a| a.from == pod_ip),
        "every query came from the pod's IP {pod_ip}: {asked:?}"
    );
    Ok(())
}
