//! The API server semantics the node agent relies on. Against the stand-in these are its
//! conformance tests; with KRUSTLET_E2E_KUBECONFIG set they run unchanged against a real cluster,
//! which is what keeps the stand-in honest.

use e2e::{Cluster, node_credentials};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

fn api_code(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(e)) => (e.code, e.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .unwrap_or_default()
        .parse()
        .expect("numeric resourceVersion")
}

fn configmap(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .expect("valid")
}

/// A pod no scheduler acts on (kube-scheduler ignores other scheduler names, so does the stand-in's).
fn parked_pod(name: &str, node: Option<&str>) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "schedulerName": "e2e-none", "nodeName": node,
        "containers": [{"name": "c", "image": "registry.invalid/x:v1"}]}}))
    .expect("valid")
}

/// A Node object with no agent behind it.
async fn fake_node(cluster: &Cluster, name: &str, taint: &str) -> anyhow::Result<Node> {
    let node: Node = serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"taints": [{"key": taint, "effect": "NoSchedule"}]}}),
    )?;
    Ok(Api::<Node>::all(cluster.client.clone())
        .create(&PostParams::default(), &node)
        .await?)
}

/// Deletes a Node when dropped (also when the test fails).
struct DeleteNode<'a>(&'a Cluster, String);

impl Drop for DeleteNode<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "delete",
            "node",
            &self.1,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

#[tokio::test]
async fn crud_with_resource_versions_uids_and_conflicts() -> anyhow::Result<()> {
    let cluster = Cluster::new("crud").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let created = cms
        .create(&PostParams::default(), &configmap("a", json!({})))
        .await?;
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(
        api_code(
            cms.create(&PostParams::default(), &configmap("a", json!({})))
                .await
        ),
        (409, "AlreadyExists".into())
    );
    assert_eq!(api_code(cms.get("missing").await), (404, "NotFound".into()));

    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.data = Some([("k".to_string(), "w".to_string())].into());
    let updated = cms.replace("a", &PostParams::default(), &fresh).await?;
    assert!(
        rv(&updated.metadata) > rv(&created.metadata),
        "resourceVersion increases"
    );
    stale.data = Some([("k".to_string(), "x".to_string())].into());
    assert_eq!(
        api_code(cms.replace("a", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );
    assert_eq!(cms.get("a").await?.data.unwrap_or_default()["k"], "w");

    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}}))?;
    let generated = cms.create(&PostParams::default(), &generated).await?;
    assert!(
        generated
            .metadata
            .name
            .unwrap_or_default()
            .starts_with("gen-")
    );
    cms.delete("a", &DeleteParams::default()).await?;
    assert_eq!(api_code(cms.get("a").await), (404, "NotFound".into()));
    Ok(())
}

#[tokio::test]
async fn status_is_a_separate_subresource() -> anyhow::Result<()> {
    let cluster = Cluster::new("status").await?;
    let pods = cluster.pods();
    let pod = cluster.create_pod(parked_pod("p", None)).await?;
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    // A write to the object ignores its status...
    let patch = json!({"metadata": {"labels": {"a": "1"}}, "status": {"phase": "Running"}});
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(
        patched.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    assert_eq!(patched.metadata.labels.unwrap_or_default()["a"], "1");
    // ...and a write to the status ignores the spec.
    let patch = json!({"spec": {"activeDeadlineSeconds": 5}, "status": {"phase": "Running", "message": "hi"}});
    let patched = pods
        .patch_status("p", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(
        patched.status.as_ref().and_then(|s| s.message.as_deref()),
        Some("hi")
    );
    assert_eq!(patched.spec.and_then(|s| s.active_deadline_seconds), None);
    Ok(())
}

#[tokio::test]
async fn json_merge_and_strategic_merge_patches() -> anyhow::Result<()> {
    let cluster = Cluster::new("patches").await?;
    let pods = cluster.pods();
    cluster.create_pod(parked_pod("p", None)).await?;
    let json_patch: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/metadata/labels", "value": {"x": "1"}}]),
    )?;
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::Json::<()>(json_patch))
        .await?;
    assert_eq!(patched.metadata.labels.unwrap_or_default()["x"], "1");
    // Strategic merge: containers merge by name (the image changes, the rest stays)...
    let patch = json!({"spec": {"containers": [{"name": "c", "image": "registry.invalid/x:v2"}]}});
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    let container = &patched.spec.as_ref().expect("spec").containers[0];
    assert_eq!(
        (
            container.image.as_deref(),
            container.image_pull_policy.as_deref()
        ),
        (Some("registry.invalid/x:v2"), Some("IfNotPresent"))
    );
    // ...status conditions merge by type.
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Strategic(&json!({"status": {"conditions": [condition("Alpha")]}})),
    )
    .await?;
    let patched = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(&json!({"status": {"conditions": [condition("Ready")]}})),
        )
        .await?;
    let types: Vec<String> = patched
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert!(
        types.contains(&"Alpha".to_string()) && types.contains(&"Ready".to_string()),
        "{types:?}"
    );
    // Node taints are replaced, not merged.
    let name = format!("patch-{}", cluster.id);
    fake_node(&cluster, &name, "a").await?;
    let _cleanup = DeleteNode(&cluster, name.clone());
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let patch = json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]}});
    let node = nodes
        .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    let keys: Vec<String> = node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert!(
        !keys.contains(&"a".to_string()) && keys.contains(&"b".to_string()),
        "{keys:?}"
    );
    Ok(())
}

#[tokio::test]
async fn list_and_watch_with_selectors_from_a_resource_version() -> anyhow::Result<()> {
    let cluster = Cluster::new("watch").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    cms.create(
        &PostParams::default(),
        &configmap("blue", json!({"color": "blue"})),
    )
    .await?;
    cms.create(
        &PostParams::default(),
        &configmap("red", json!({"color": "red"})),
    )
    .await?;
    let blue = cms
        .list(&ListParams::default().labels("color=blue"))
        .await?;
    assert_eq!(blue.items.len(), 1);
    let named = cms
        .list(&ListParams::default().fields("metadata.name=red"))
        .await?;
    assert_eq!(named.items[0].metadata.name.as_deref(), Some("red"));
    assert_eq!(
        cms.list(&ListParams::default().labels("color in (blue,red)"))
            .await?
            .items
            .len(),
        2
    );

    let from = blue.metadata.resource_version.clone().unwrap_or_default();
    let mut stream = cms
        .watch(
            &WatchParams::default().labels("color=blue").timeout(30),
            &from,
        )
        .await?
        .boxed();
    cms.create(
        &PostParams::default(),
        &configmap("blue2", json!({"color": "blue"})),
    )
    .await?;
    cms.create(
        &PostParams::default(),
        &configmap("green", json!({"color": "green"})),
    )
    .await?;
    cms.patch(
        "blue",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"k": "changed"}})),
    )
    .await?;
    cms.patch(
        "blue2",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"color": "green"}}})),
    )
    .await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(e2e::DEADLINE, stream.try_next())
            .await??
            .expect("watch ended early");
        match event {
            WatchEvent::Added(o) => {
                seen.push(format!("ADDED {}", o.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Modified(o) => {
                seen.push(format!("MODIFIED {}", o.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Deleted(o) => {
                seen.push(format!("DELETED {}", o.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    // blue2 leaving the selector is a DELETED for this watch; green never matched.
    assert_eq!(seen, ["ADDED blue2", "MODIFIED blue", "DELETED blue2"]);
    assert_eq!(
        api_code(
            cms.list(&ListParams::default().fields("spec.bogus=1"))
                .await
        )
        .0,
        400
    );
    Ok(())
}

#[tokio::test]
async fn pods_bound_to_a_node_are_deleted_gracefully_and_unbound_ones_at_once() -> anyhow::Result<()>
{
    let cluster = Cluster::new("graceful").await?;
    let node = format!("graceful-{}", cluster.id);
    fake_node(&cluster, &node, "e2e").await?;
    let _cleanup = DeleteNode(&cluster, node.clone());
    let pods = cluster.pods();
    cluster.create_pod(parked_pod("bound", Some(&node))).await?;
    cluster.create_pod(parked_pod("unbound", None)).await?;
    pods.delete("unbound", &DeleteParams::default()).await?;
    assert!(pods.get_opt("unbound").await?.is_none());
    pods.delete("bound", &DeleteParams::default()).await?;
    let marked = pods.get("bound").await?;
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    // The node's final delete: grace 0 with the uid as precondition.
    let wrong_uid = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: Some("0".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_code(pods.delete("bound", &wrong_uid).await).0, 409);
    pods.delete(
        "bound",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    assert!(pods.get_opt("bound").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_removes_what_it_holds() -> anyhow::Result<()> {
    let cluster = Cluster::new("nsdelete").await?;
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let name = format!("doomed-{}", cluster.id);
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &name);
    cms.create(&PostParams::default(), &configmap("c", json!({})))
        .await?;
    namespaces.delete(&name, &DeleteParams::default()).await?;
    let creating = cms
        .create(&PostParams::default(), &configmap("late", json!({})))
        .await;
    assert!(
        matches!(creating, Err(kube::Error::Api(ref e)) if e.code == 403 || e.code == 404),
        "{creating:?}"
    );
    cluster
        .eventually("the namespace to go", async || {
            Ok(namespaces.get_opt(&name).await?.is_none().then_some(()))
        })
        .await?;
    assert_eq!(api_code(cms.get("c").await).0, 404);
    Ok(())
}

/// A node identity that registered its own Node, beside a Node with no agent; both are
/// deleted when dropped.
struct NodePair<'a> {
    /// The node's name.
    mine: String,
    /// The other Node's name.
    theirs: String,
    /// A client with the node's credentials.
    client: kube::Client,
    /// The node's Node, as created.
    node: Node,
    _cleanup: (DeleteNode<'a>, DeleteNode<'a>),
}

impl<'a> NodePair<'a> {
    async fn register(cluster: &'a Cluster, dir: &std::path::Path) -> anyhow::Result<Self> {
        let (mine, theirs) = (
            format!("mine-{}", cluster.id),
            format!("theirs-{}", cluster.id),
        );
        fake_node(cluster, &theirs, "e2e").await?;
        let cleanup = (
            DeleteNode(cluster, theirs.clone()),
            DeleteNode(cluster, mine.clone()),
        );
        let client = e2e::client_for(&node_credentials(cluster, &mine, dir).await?).await?;
        let node: Node = serde_json::from_value(json!({"metadata": {"name": mine}}))?;
        let node = Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await?;
        Ok(Self {
            mine,
            theirs,
            client,
            node,
            _cleanup: cleanup,
        })
    }
}

#[tokio::test]
async fn a_node_may_write_its_own_objects_and_no_other_nodes() -> anyhow::Result<()> {
    let cluster = Cluster::new("nodeauthz").await?;
    let dir = tempfile::tempdir()?;
    let pair = NodePair::register(&cluster, dir.path()).await?;
    let (mine, theirs, as_node) = (pair.mine.clone(), pair.theirs.clone(), pair.client.clone());
    let nodes: Api<Node> = Api::all(as_node.clone());
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "E2E", "message": "testing"}]}});
    nodes
        .patch_status(&mine, &PatchParams::default(), &Patch::Strategic(&status))
        .await?;
    assert_eq!(
        api_code(
            nodes
                .patch_status(&theirs, &PatchParams::default(), &Patch::Strategic(&status))
                .await
        )
        .0,
        403
    );
    let leases: Api<Lease> = Api::namespaced(as_node.clone(), "kube-node-lease");
    let lease = |name: &str| -> Lease {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"holderIdentity": name, "leaseDurationSeconds": 40}})).expect("valid")
    };
    leases.create(&PostParams::default(), &lease(&mine)).await?;
    assert_eq!(
        api_code(leases.create(&PostParams::default(), &lease(&theirs)).await).0,
        403
    );
    // Pods bound elsewhere are not the node's to touch.
    cluster
        .create_pod(parked_pod("elsewhere", Some(&theirs)))
        .await?;
    let node_pods: Api<Pod> = Api::namespaced(as_node, &cluster.namespace);
    let patch = json!({"status": {"message": "mine now"}});
    assert_eq!(
        api_code(
            node_pods
                .patch_status(
                    "elsewhere",
                    &PatchParams::default(),
                    &Patch::Strategic(&patch)
                )
                .await
        )
        .0,
        403
    );
    Api::<Lease>::namespaced(cluster.client.clone(), "kube-node-lease")
        .delete(&mine, &DeleteParams::default())
        .await?;
    Ok(())
}

/// The code and message of an API error.
fn refusal(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(e)) => (e.code, e.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_reads_only_its_own_node_and_the_pods_bound_to_it() -> anyhow::Result<()> {
    // 1.32's Node authorizer (AuthorizeNodeWithSelectors, on by default).
    let cluster = Cluster::new("nodereads").await?;
    let dir = tempfile::tempdir()?;
    let pair = NodePair::register(&cluster, dir.path()).await?;
    let (mine, theirs, as_node) = (pair.mine.clone(), pair.theirs.clone(), pair.client.clone());
    let nodes: Api<Node> = Api::all(as_node.clone());
    let my_node = pair.node.clone();
    // Its own Node, and no other, not even in a list.
    nodes.get(&mine).await?;
    let (code, message) = refusal(nodes.get(&theirs).await);
    assert_eq!(code, 403);
    assert!(
        message.contains(&format!("cannot read '{theirs}', only its own Node object")),
        "{message}"
    );
    let (code, message) = refusal(nodes.list(&ListParams::default()).await);
    assert_eq!(code, 403);
    assert!(message.contains("cannot read all nodes"), "{message}");
    nodes
        .list(&ListParams::default().fields(&format!("metadata.name={mine}")))
        .await?;
    // Pods: one bound to it is read; one bound elsewhere, or none at all, has no relationship
    // to the node (403, not 404: a node cannot tell whether a pod it may not read exists).
    cluster.create_pod(parked_pod("here", Some(&mine))).await?;
    cluster
        .create_pod(parked_pod("there", Some(&theirs)))
        .await?;
    let pods: Api<Pod> = Api::namespaced(as_node.clone(), &cluster.namespace);
    pods.get("here").await?;
    for name in ["there", "nowhere"] {
        let (code, message) = refusal(pods.get(name).await);
        assert_eq!(code, 403, "{name}");
        assert!(
            message.contains(&format!(
                "no relationship found between node '{mine}' and this object"
            )),
            "{message}"
        );
    }
    // Lists and watches only with its own spec.nodeName selector.
    let own = ListParams::default().fields(&format!("spec.nodeName={mine}"));
    let listed = Api::<Pod>::all(as_node.clone()).list(&own).await?;
    let names: Vec<_> = listed
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["here"]);
    for params in [
        ListParams::default(),
        ListParams::default().fields(&format!("spec.nodeName={theirs}")),
        ListParams::default().labels("app=x"),
    ] {
        let (code, message) = refusal(pods.list(&params).await);
        assert_eq!(code, 403);
        assert!(
            message.contains("can only list/watch pods with spec.nodeName field selector"),
            "{message}"
        );
    }
    let (code, _) = refusal(pods.watch(&WatchParams::default(), "0").await.map(|_| ()));
    assert_eq!(code, 403);
    let mut watched = pods
        .watch(
            &WatchParams::default().fields(&format!("spec.nodeName={mine}")),
            "0",
        )
        .await?
        .boxed();
    let first =
        tokio::time::timeout(std::time::Duration::from_secs(10), watched.try_next()).await??;
    assert!(
        matches!(&first, Some(WatchEvent::Added(p)) if p.metadata.name.as_deref() == Some("here")),
        "{first:?}"
    );
    // A mirror pod that does not exist yet is created without reading it first; a second
    // create is AlreadyExists.
    let mirror: Pod = serde_json::from_value(json!({
        "metadata": {"name": "mirror", "annotations": {"kubernetes.io/config.mirror": "h1"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": mine,
                "uid": my_node.metadata.uid, "controller": true}]},
        "spec": {"nodeName": mine, "containers": [{"name": "c", "image": "registry.invalid/x:v1"}]}
    }))?;
    pods.create(&PostParams::default(), &mirror).await?;
    assert_eq!(
        api_code(pods.create(&PostParams::default(), &mirror).await),
        (409, "AlreadyExists".into())
    );
    pods.get("mirror").await?;
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_the_real_servers_codes() -> anyhow::Result<()> {
    let cluster = Cluster::new("badreq").await?;
    let path = format!("/api/v1/namespaces/{}/configmaps", cluster.namespace);
    let post = |body: Vec<u8>, query: &str| {
        http::Request::post(format!("{path}{query}"))
            .header("content-type", "application/json")
            .body(body)
            .expect("request")
    };
    let code = |r: Result<String, kube::Error>| match r {
        Err(kube::Error::Api(e)) => e.code,
        other => panic!("expected an API error, got {other:?}"),
    };
    assert_eq!(
        code(
            cluster
                .client
                .request_text(post(b"{not json".to_vec(), ""))
                .await
        ),
        400
    );
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
    assert_eq!(
        code(
            cluster
                .client
                .request_text(post(serde_json::to_vec(&wrong_kind)?, ""))
                .await
        ),
        400
    );
    let unknown =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "bogus": 1});
    assert_eq!(
        code(
            cluster
                .client
                .request_text(post(
                    serde_json::to_vec(&unknown)?,
                    "?fieldValidation=Strict"
                ))
                .await
        ),
        400
    );
    let huge = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"}, "data": {"k": "x".repeat(4 * 1024 * 1024)}});
    assert_eq!(
        code(
            cluster
                .client
                .request_text(post(serde_json::to_vec(&huge)?, ""))
                .await
        ),
        413
    );
    let nameless = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
    assert_eq!(
        code(
            cluster
                .client
                .request_text(post(serde_json::to_vec(&nameless)?, ""))
                .await
        ),
        422
    );
    // The stand-in is still serving.
    assert!(
        cluster
            .kubectl(&["get", "--raw", "/version"])?
            .contains("gitVersion")
    );
    let resources = cluster.kubectl(&["api-resources", "--no-headers"])?;
    for kind in [
        "pods",
        "nodes",
        "leases",
        "certificatesigningrequests",
        "events",
    ] {
        assert!(resources.contains(kind), "api-resources lacks {kind}");
    }
    Ok(())
}

#[tokio::test]
async fn anonymous_requests_are_refused_and_reviews_answer_for_the_authenticator()
-> anyhow::Result<()> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let cluster = Cluster::new("reviews").await?;
    // Anonymous: public endpoints only.
    let file = kube::config::Kubeconfig::read_from(cluster.admin_kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await?;
    config.auth_info = Default::default();
    let anonymous = kube::Client::try_from(config)?;
    let pods: Api<Pod> = Api::namespaced(anonymous.clone(), &cluster.namespace);
    let (code, _) = api_code(pods.list(&ListParams::default()).await);
    assert!(code == 401 || code == 403, "anonymous list got {code}");
    assert!(
        anonymous.apiserver_version().await.is_ok(),
        "/version is public"
    );

    // TokenReview: a service account token authenticates as the account; garbage does not.
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let sa = cluster
        .eventually("the default service account", async || {
            Ok(sas.get_opt("default").await?)
        })
        .await?;
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 600}}))?;
    let issued: TokenRequest = sas
        .create_subresource(
            "token",
            sa.metadata.name.as_deref().unwrap_or_default(),
            &PostParams::default(),
            &request,
        )
        .await?;
    let token = issued.status.map(|s| s.token).unwrap_or_default();
    let reviews: Api<TokenReview> = Api::all(cluster.client.clone());
    let review = |token: &str| -> TokenReview {
        serde_json::from_value(json!({"spec": {"token": token}})).expect("valid")
    };
    let answer = reviews
        .create(&PostParams::default(), &review(&token))
        .await?
        .status
        .unwrap_or_default();
    assert_eq!(answer.authenticated, Some(true));
    assert_eq!(
        answer.user.and_then(|u| u.username),
        Some(format!(
            "system:serviceaccount:{}:default",
            cluster.namespace
        ))
    );
    let answer = reviews
        .create(&PostParams::default(), &review("not-a-token"))
        .await?
        .status
        .unwrap_or_default();
    assert_ne!(answer.authenticated, Some(true));

    // SubjectAccessReview answers as the Node authorizer would.
    let sars: Api<SubjectAccessReview> = Api::all(cluster.client.clone());
    let ask = |lease: &str| -> SubjectAccessReview {
        serde_json::from_value(json!({"spec": {"user": "system:node:n1", "groups": ["system:nodes", "system:authenticated"],
            "resourceAttributes": {"verb": "update", "group": "coordination.k8s.io", "resource": "leases", "namespace": "kube-node-lease", "name": lease}}}))
        .expect("valid")
    };
    assert_eq!(
        sars.create(&PostParams::default(), &ask("n1"))
            .await?
            .status
            .map(|s| s.allowed),
        Some(true)
    );
    assert_eq!(
        sars.create(&PostParams::default(), &ask("n2"))
            .await?
            .status
            .map(|s| s.allowed),
        Some(false)
    );
    Ok(())
}

#[tokio::test]
async fn events_are_served_by_both_event_apis() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Event;
    let cluster = Cluster::new("events").await?;
    let core: Api<Event> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "reason": "Pulled", "message": "pulled it", "type": "Normal",
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": cluster.namespace},
        "source": {"component": "kubelet", "host": "n1"}, "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
    }))?;
    core.create(&PostParams::default(), &event).await?;
    let new: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let seen = new.get("e1").await?;
    assert_eq!(seen.note.as_deref(), Some("pulled it"));
    assert_eq!(seen.regarding.and_then(|r| r.name).as_deref(), Some("p"));
    assert_eq!(seen.reason.as_deref(), Some("Pulled"));
    let described = cluster.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=p",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert_eq!(described, "Pulled");
    Ok(())
}

#[tokio::test]
async fn serving_certificates_wait_for_approval_and_malformed_csrs_are_refused()
-> anyhow::Result<()> {
    use base64::Engine;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    let cluster = Cluster::new("servingcsr").await?;
    let csrs: Api<CertificateSigningRequest> = Api::all(cluster.client.clone());
    let malformed: CertificateSigningRequest = serde_json::from_value(
        json!({"metadata": {"name": format!("bad-{}", cluster.id)}, "spec": {
        "request": base64::engine::general_purpose::STANDARD.encode("not a certificate request"),
        "signerName": "kubernetes.io/kubelet-serving", "usages": ["server auth"]}}),
    )?;
    assert_eq!(
        api_code(csrs.create(&PostParams::default(), &malformed).await),
        (422, "Invalid".into())
    );

    let node = format!("serving-{}", cluster.id);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), node.clone()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let pem = params.serialize_request(&key)?.pem()?;
    let name = format!("serving-{}", cluster.id);
    let csr: CertificateSigningRequest = serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {
        "request": base64::engine::general_purpose::STANDARD.encode(pem),
        "signerName": "kubernetes.io/kubelet-serving", "usages": ["digital signature", "server auth"]}}),
    )?;
    let dir = tempfile::tempdir()?;
    let as_node = e2e::client_for(&node_credentials(&cluster, &node, dir.path()).await?).await?;
    let created = Api::<CertificateSigningRequest>::all(as_node)
        .create(&PostParams::default(), &csr)
        .await?;
    assert!(
        created.status.and_then(|s| s.certificate).is_none(),
        "not signed before approval"
    );
    e2e::approve_csr(&cluster, &name).await?;
    let signed = e2e::wait_for(
        csrs.clone(),
        &name,
        |c: Option<&CertificateSigningRequest>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.certificate.as_ref())
                .is_some()
        },
    )
    .await?;
    assert!(signed.is_some());
    csrs.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn watches_send_bookmarks_when_asked() -> anyhow::Result<()> {
    let cluster = Cluster::new("bookmarks").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let list = cms.list(&ListParams::default()).await?;
    let from = list.metadata.resource_version.unwrap_or_default();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(290), &from)
        .await?
        .boxed();
    // Bookmarks are on by default in kube-rs; a real API server sends one about once a minute.
    let bookmark = tokio::time::timeout(std::time::Duration::from_secs(130), async {
        while let Some(event) = stream.try_next().await? {
            if let WatchEvent::Bookmark(b) = event {
                return Ok::<_, kube::Error>(Some(b));
            }
        }
        Ok(None)
    })
    .await??;
    let bookmark = bookmark.expect("a bookmark before the watch ended");
    assert!(!bookmark.metadata.resource_version.is_empty());
    Ok(())
}

#[tokio::test]
async fn pods_come_back_with_the_fields_the_node_reads_defaulted() -> anyhow::Result<()> {
    let cluster = Cluster::new("defaults").await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {
        "schedulerName": "e2e-none",
        "containers": [{
            "name": "c", "image": "registry.invalid/x:v1",
            "ports": [{"containerPort": 80}],
            "env": [
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "livenessProbe": {"httpGet": {"port": 80}},
            "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 3},
            "lifecycle": {"preStop": {"httpGet": {"port": 80}}},
        }],
        "volumes": [
            {"name": "nothing"},
            {"name": "cm", "configMap": {"name": "x"}},
            {"name": "secret", "secret": {"secretName": "x"}},
            {"name": "host", "hostPath": {"path": "/tmp"}},
            {"name": "down", "downwardAPI": {"items": [
                {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            ]}},
            {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
        ],
    }}))?;
    let created = serde_json::to_value(pods.create(&PostParams::default(), &pod).await?)?;
    let spec = &created["spec"];
    let c = &spec["containers"][0];
    assert_eq!(
        (
            &spec["restartPolicy"],
            &spec["terminationGracePeriodSeconds"],
            &spec["dnsPolicy"],
            &spec["enableServiceLinks"],
        ),
        (
            &json!("Always"),
            &json!(30),
            &json!("ClusterFirst"),
            &json!(true)
        )
    );
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["ports"][0]["protocol"], "TCP");
    assert_eq!(c["env"][0]["valueFrom"]["resourceFieldRef"]["divisor"], "0");
    assert_eq!(c["env"][1]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    let probe = &c["livenessProbe"];
    assert_eq!(
        (
            &probe["timeoutSeconds"],
            &probe["periodSeconds"],
            &probe["successThreshold"],
            &probe["failureThreshold"]
        ),
        (&json!(1), &json!(10), &json!(1), &json!(3))
    );
    assert_eq!(
        (&probe["httpGet"]["path"], &probe["httpGet"]["scheme"]),
        (&json!("/"), &json!("HTTP"))
    );
    assert_eq!(c["readinessProbe"]["periodSeconds"], 3, "set values stay");
    assert_eq!(c["lifecycle"]["preStop"]["httpGet"]["scheme"], "HTTP");
    let volumes = &spec["volumes"];
    assert_eq!(volumes[0]["emptyDir"], json!({}), "a volume with no source");
    assert_eq!(volumes[1]["configMap"]["defaultMode"], 420);
    assert_eq!(volumes[2]["secret"]["defaultMode"], 420);
    assert_eq!(volumes[3]["hostPath"]["type"], "");
    assert_eq!(volumes[4]["downwardAPI"]["defaultMode"], 420);
    assert_eq!(
        volumes[4]["downwardAPI"]["items"][0]["resourceFieldRef"]["divisor"],
        "0"
    );
    assert_eq!(
        volumes[4]["downwardAPI"]["items"][1]["fieldRef"]["apiVersion"],
        "v1"
    );
    assert_eq!(volumes[5]["projected"]["defaultMode"], 420);
    assert_eq!(
        volumes[5]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3600
    );
    assert!(
        c.get("env").is_some() && spec.get("initContainers").is_none(),
        "nothing added that was not there"
    );
    Ok(())
}

#[tokio::test]
async fn pod_specs_the_node_could_not_honour_are_refused_at_creation() -> anyhow::Result<()> {
    let cluster = Cluster::new("invalid").await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let with = |name: &str, spec: serde_json::Value| -> Pod {
        let mut pod = json!({"metadata": {"name": name}, "spec": {
            "schedulerName": "e2e-none",
            "containers": [{"name": "c", "image": "registry.invalid/x:v1"}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        }});
        json_patch::merge(&mut pod, &json!({"spec": spec}));
        serde_json::from_value(pod).expect("a pod")
    };
    let container = |extra: serde_json::Value| {
        let mut c = json!({"name": "c", "image": "registry.invalid/x:v1"});
        json_patch::merge(&mut c, &extra);
        json!({"containers": [c]})
    };
    let invalid = [
        with(
            "escape",
            container(
                json!({"volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "a/../../etc"}]}),
            ),
        ),
        with(
            "absolute",
            container(
                json!({"volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "/etc"}]}),
            ),
        ),
        with("deadline-zero", json!({"activeDeadlineSeconds": 0})),
        with("deadline-huge", json!({"activeDeadlineSeconds": i64::MAX})),
        with(
            "probe-negative",
            container(json!({"livenessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": -1}})),
        ),
        with(
            "liveness-threshold",
            container(json!({"livenessProbe": {"tcpSocket": {"port": 1}, "successThreshold": 2}})),
        ),
    ];
    for pod in invalid {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (code, reason) = api_code(pods.create(&PostParams::default(), &pod).await);
        assert_eq!((code, reason.as_str()), (422, "Invalid"), "{name}");
    }
    // What is fine stays fine.
    let fine = with(
        "fine",
        json!({"activeDeadlineSeconds": 30, "containers": [{"name": "c", "image": "registry.invalid/x:v1",
            "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "a/b..c"}],
            "readinessProbe": {"tcpSocket": {"port": 1}, "successThreshold": 2}}]}),
    );
    pods.create(&PostParams::default(), &fine).await?;
    Ok(())
}

#[tokio::test]
async fn the_taint_eviction_controller_deletes_pods_that_stop_tolerating_a_no_execute_taint()
-> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    let cluster = Cluster::new("evict").await?;
    let node_name = format!("{}-evicting", cluster.id);
    let key = "e2e.krustlet.dev/evict";
    let node: Node = serde_json::from_value(json!({"metadata": {"name": node_name},
        "spec": {"taints": [{"key": key, "effect": "NoExecute"}]}}))?;
    Api::<Node>::all(cluster.client.clone())
        .create(&PostParams::default(), &node)
        .await?;
    let _cleanup = DeleteNode(&cluster, node_name.clone());
    let pods = cluster.pods();
    let created = Instant::now();
    let tolerating = |seconds: Option<i64>| {
        let mut toleration = json!({"key": key, "operator": "Exists", "effect": "NoExecute"});
        if let Some(seconds) = seconds {
            toleration["tolerationSeconds"] = json!(seconds);
        }
        json!([toleration])
    };
    for (name, tolerations) in [
        ("intolerant", json!([])),
        ("for-a-while", tolerating(Some(3))),
        ("for-ever", tolerating(None)),
    ] {
        let mut pod = serde_json::to_value(parked_pod(name, Some(&node_name)))?;
        pod["spec"]["tolerations"] = tolerations;
        pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await?;
    }
    let deleting = |pod: Option<&Pod>| pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
    // No kubelet runs on this node, so an evicted pod stays Terminating with the condition the
    // controller set before deleting it.
    let evicted = e2e::wait_for(pods.clone(), "intolerant", deleting)
        .await?
        .expect("a pod on a node with no kubelet is not removed");
    let conditions = evicted
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    assert!(
        conditions.iter().any(|c| c.type_ == "DisruptionTarget"
            && c.status == "True"
            && c.reason.as_deref() == Some("DeletionByTaintManager")),
        "{conditions:?}"
    );
    e2e::wait_for(pods.clone(), "for-a-while", deleting).await?;
    assert!(
        created.elapsed() >= Duration::from_secs(3),
        "evicted before its tolerationSeconds ran out, after {:?}",
        created.elapsed()
    );
    let forever = pods.get("for-ever").await?;
    assert!(
        forever.metadata.deletion_timestamp.is_none(),
        "a toleration without tolerationSeconds tolerates for ever"
    );
    Ok(())
}
