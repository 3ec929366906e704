//! The kubelet API is authenticated and authorized like the kubelet's: client certificates
//! against --client-ca-file, bearer tokens through TokenReview, SubjectAccessReview on
//! nodes/proxy, 401 for anonymous requests unless --anonymous-auth.

use e2e::{Cluster, admin_auth, kubelet_get};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::AuthInfo;

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
