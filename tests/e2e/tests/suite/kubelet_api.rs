//! The kubelet API is authenticated and authorized like the kubelet's: client certificates
//! against --client-ca-file, bearer tokens through TokenReview, SubjectAccessReview on
//! nodes/proxy, 401 for anonymous requests unless --anonymous-auth.

use e2e::{Cluster, admin_auth, kubelet_get, node_ip};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::AuthInfo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn only_authorized_clients_reach_the_kubelet_api() -> anyhow::Result<()> {
    let cluster = Cluster::new("kubeletapi").await?;
    let agent = cluster.start_node().await?;
    // No credentials: 401, even for /healthz.
    assert_eq!(
        kubelet_get(&agent, AuthInfo::default(), "/pods").await?.0,
        401
    );
    assert_eq!(
        kubelet_get(&agent, AuthInfo::default(), "/healthz")
            .await?
            .0,
        401
    );
    // The cluster admin (a client certificate in system:masters) may.
    let (code, body) = kubelet_get(&agent, admin_auth()?, "/pods").await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"kind\":\"PodList\""), "{body}");
    // A service account token authenticates (TokenReview) but is not authorized on nodes/proxy.
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    cluster
        .eventually("the default service account", async || {
            Ok(sas.get_opt("default").await?)
        })
        .await?;
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"expirationSeconds": 600}}))?;
    let issued: TokenRequest = sas
        .create_subresource("token", "default", &PostParams::default(), &request)
        .await?;
    let token = AuthInfo {
        token: issued.status.map(|s| s.token.into()),
        ..Default::default()
    };
    let (code, body) = kubelet_get(&agent, token, "/containerLogs/x/y/z").await?;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(&format!(
            "user=system:serviceaccount:{}:default",
            cluster.namespace
        )) && body.contains("subresource(s)=[proxy]"),
        "{body}"
    );
    // kubectl exec has nothing to enter in a wasm guest: a clear refusal.
    let (code, body) =
        kubelet_get(&agent, admin_auth()?, "/exec/ns/pod/container?command=sh").await?;
    assert_eq!(code, 501, "{body}");
    assert!(
        body.contains("not supported for WebAssembly pods"),
        "{body}"
    );
    // A bad token is 401.
    let bad = AuthInfo {
        token: Some("not-a-token".to_string().into()),
        ..Default::default()
    };
    assert_eq!(kubelet_get(&agent, bad, "/pods").await?.0, 401);
    Ok(())
}

#[tokio::test]
async fn anonymous_auth_lets_only_healthz_through() -> anyhow::Result<()> {
    let cluster = Cluster::new("anonymous").await?;
    let data_dir = tempfile::Builder::new().prefix("krustlet-node").tempdir()?;
    let name = format!("node-{}", cluster.id);
    let credentials = e2e::Credentials::Kubeconfig(
        e2e::node_credentials(&cluster, &name, data_dir.path()).await?,
    );
    let agent = e2e::NodeAgent::start_with_args(
        &cluster,
        &name,
        data_dir,
        credentials,
        &["--anonymous-auth"],
    )
    .await?;
    assert_eq!(
        kubelet_get(&agent, AuthInfo::default(), "/healthz").await?,
        (200, "ok".to_string())
    );
    let (code, body) = kubelet_get(&agent, AuthInfo::default(), "/pods").await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("user=system:anonymous"), "{body}");
    Ok(())
}

#[tokio::test]
async fn the_agent_serves_its_own_metrics() -> anyhow::Result<()> {
    let cluster = Cluster::new("agentmetrics").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    cluster
        .create_pod(e2e::wasm_pod(
            "steady",
            &image,
            &agent.name,
            &["forever"],
            "Never",
        ))
        .await?;
    cluster
        .wait_pod("steady", "Running", e2e::has_phase("Running"))
        .await?;
    // Through the API server, as Prometheus scrapes nodes (nodes/metrics).
    let path = format!("/api/v1/nodes/{}/proxy/metrics", agent.name);
    let text = cluster.kubectl(&["get", "--raw", &path])?;
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(value("kubelet_running_pods "), 1.0, "{text}");
    assert_eq!(value("kubelet_running_containers "), 1.0, "{text}");
    assert_eq!(
        value("kubelet_started_containers_total{container_type=\"container\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("kubelet_pod_start_duration_seconds_count"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("krustlet_image_pulls_total{outcome=\"pulled\"}"),
        1.0,
        "{text}"
    );
    assert!(
        value("rest_client_requests_total{code=\"200\"}") > 0.0,
        "the agent's API requests are counted: {text}"
    );
    // Without credentials, the node answers nothing.
    assert_eq!(
        kubelet_get(&agent, AuthInfo::default(), "/metrics")
            .await?
            .0,
        401
    );
    Ok(())
}

#[tokio::test]
async fn secrets_and_tokens_stay_out_of_the_agents_log() -> anyhow::Result<()> {
    let cluster = Cluster::new("nolog").await?;
    let agent = cluster.start_node().await?;
    let image = cluster.push_guest("wasi-probe").await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let value = "s3cret-value-7f3a9c";
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "creds"}, "stringData": {"password": value}
            }))?,
        )
        .await?;
    let mut pod = e2e::wasm_pod(
        "reader",
        &image,
        &agent.name,
        &[
            "env",
            "read",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ],
        "Never",
    );
    pod.spec.as_mut().expect("spec").containers[0].env = Some(serde_json::from_value(
        serde_json::json!([{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}]),
    )?);
    cluster.create_pod(pod).await?;
    cluster
        .wait_pod("reader", "Succeeded", e2e::has_phase("Succeeded"))
        .await?;
    // The guest saw both (its own output may show them)...
    let output = cluster.kubectl(&["logs", "reader"])?;
    assert!(output.contains(&format!("PASSWORD={value}")), "{output}");
    let token = output.lines().last().unwrap_or_default().trim().to_string();
    assert!(token.len() > 20, "a token was mounted: {output}");
    // ...the node agent's own log shows neither.
    let log = agent.log();
    assert!(
        !log.contains(value),
        "the secret leaked into the agent's log"
    );
    assert!(
        !log.contains(&token),
        "the token leaked into the agent's log"
    );
    Ok(())
}

/// Waits until the agent closes `stream` (a read ends or fails); false after `within`.
async fn closed_by_peer(mut stream: impl tokio::io::AsyncRead + Unpin, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn silent_and_slow_clients_are_cut_while_others_are_served() -> anyhow::Result<()> {
    let cluster = Cluster::new("slowclients").await?;
    let agent = cluster
        .start_node_with(&["--kubelet-api-handshake-timeout", "2s"])
        .await?;
    let addr = format!("{}:{}", node_ip(), agent.port);
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(testkit::apiserver::anonymous_client_config()));
    let server_name = rustls::pki_types::ServerName::try_from(node_ip())?;
    // Clients that never start their TLS handshake...
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(&addr).await?);
    }
    // ...clients that finish it and then send nothing...
    let mut idle = Vec::new();
    for _ in 0..5 {
        let tcp = TcpStream::connect(&addr).await?;
        idle.push(connector.connect(server_name.clone(), tcp).await?);
    }
    // ...and one that sends half of a request's headers.
    let tcp = TcpStream::connect(&addr).await?;
    let mut partial = connector.connect(server_name.clone(), tcp).await?;
    partial
        .write_all(b"GET /pods HTTP/1.1\r\nHost: node\r\n")
        .await?;
    // Meanwhile the API answers everyone else.
    assert_eq!(
        kubelet_get(&agent, AuthInfo::default(), "/healthz")
            .await?
            .0,
        401
    );
    let (code, _) = kubelet_get(&agent, admin_auth()?, "/pods").await?;
    assert_eq!(code, 200);
    // Every one of them is cut once the 2 s it had are over (with slack for a loaded machine).
    let within = Duration::from_secs(10);
    let started = std::time::Instant::now();
    for (i, stream) in silent.into_iter().enumerate() {
        assert!(
            closed_by_peer(stream, within).await,
            "silent client {i} was cut"
        );
    }
    for (i, stream) in idle.into_iter().enumerate() {
        assert!(
            closed_by_peer(stream, within).await,
            "idle TLS client {i} was cut"
        );
    }
    assert!(
        closed_by_peer(partial, within).await,
        "the half-sent request was cut"
    );
    assert!(started.elapsed() < within, "all within the timeout's slack");
    // Many distinct bad tokens are each refused (and their answers cached in a bounded cache).
    for i in 0..50 {
        let auth = AuthInfo {
            token: Some(format!("not-a-token-{i}").into()),
            ..Default::default()
        };
        assert_eq!(kubelet_get(&agent, auth, "/pods").await?.0, 401);
    }
    // Out-of-range log options are answered 400, as the kubelet does.
    let query = "/containerLogs/default/none/c?sinceSeconds=-1";
    let (code, _) = kubelet_get(&agent, admin_auth()?, query).await?;
    assert!(code == 400 || code == 404, "{code}");
    Ok(())
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() -> anyhow::Result<()> {
    let cluster = Cluster::new("apicap").await?;
    let agent = cluster
        .start_node_with(&[
            "--kubelet-api-max-connections",
            "4",
            "--kubelet-api-handshake-timeout",
            "3s",
        ])
        .await?;
    let addr = format!("{}:{}", node_ip(), agent.port);
    // Four clients that never start their TLS handshake hold every slot...
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(&addr).await?);
    }
    // ...so the next client is served only once they are cut (after their 3 s), not before.
    let started = std::time::Instant::now();
    let (code, _) = tokio::time::timeout(
        Duration::from_secs(30),
        kubelet_get(&agent, AuthInfo::default(), "/healthz"),
    )
    .await??;
    let waited = started.elapsed();
    assert_eq!(code, 401, "served at last");
    assert!(
        waited >= Duration::from_secs(2),
        "served after {waited:?}, while every slot was taken"
    );
    for (i, stream) in silent.into_iter().enumerate() {
        assert!(
            closed_by_peer(stream, Duration::from_secs(10)).await,
            "silent client {i} was cut"
        );
    }
    Ok(())
}
