//! Nodes with no agent behind them, for tests of what the control plane does with a zone's
//! nodes: a real cluster's zones hold other nodes, and the node lifecycle controller decides
//! by them whether to evict (see `testkit::apiserver`'s node lifecycle).

use crate::Cluster;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;

/// How often a Ready fake node renews its Lease (the kubelet's `nodeLeaseDurationSeconds` is
/// 40 s, renewed every quarter of it).
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// The zone label the node lifecycle controller groups nodes by.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Node registered by the test in a zone, that nothing is scheduled onto (tainted and
/// unschedulable). A Ready one renews its Lease every 10 s, as a kubelet does, for as long as
/// it lives; a not-Ready one posted `Ready=False` once and is silent since. Deleted, with its
/// Lease, when dropped (also when the test fails).
pub struct FakeNode<'a> {
    cluster: &'a Cluster,
    /// The Node's name.
    pub name: String,
    _renewing: Option<AbortOnDropHandle<()>>,
}

impl<'a> FakeNode<'a> {
    /// Registers `name` in `zone`, Ready or not.
    pub async fn register(
        cluster: &'a Cluster,
        name: &str,
        zone: &str,
        ready: bool,
    ) -> anyhow::Result<Self> {
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {ZONE_LABEL: zone}},
            "spec": {"unschedulable": true,
                "taints": [{"key": "krustlet.dev/e2e-fake-node", "effect": "NoSchedule"}]},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        let mut fake = Self {
            cluster,
            name: name.to_string(),
            _renewing: None,
        };
        let now = jiff::Timestamp::now().to_string();
        let (status, reason) = if ready {
            ("True", "KubeletReady")
        } else {
            ("False", "KubeletNotReady")
        };
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": status,
            "reason": reason, "message": "an e2e test's node with no agent",
            "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
            .await?;
        if ready {
            let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40},
            }))?;
            leases.create(&PostParams::default(), &lease).await?;
            fake._renewing = Some(AbortOnDropHandle::new(tokio::spawn(renew(
                leases,
                name.to_string(),
            ))));
        }
        Ok(fake)
    }
}

/// Renews the Lease `name` every [`RENEW_EVERY`], for as long as the task runs.
async fn renew(leases: Api<Lease>, name: String) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    loop {
        every.tick().await;
        let patch = json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
        if let Err(e) = leases
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            eprintln!("renewing the Lease of fake node {name}: {e}");
        }
    }
}

impl Drop for FakeNode<'_> {
    fn drop(&mut self) {
        let name = self.name.as_str();
        let _ =
            self.cluster
                .kubectl(&["delete", "node", name, "--wait=false", "--ignore-not-found"]);
        let _ = self.cluster.kubectl(&[
            "delete",
            "lease",
            "--namespace=kube-node-lease",
            name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}
