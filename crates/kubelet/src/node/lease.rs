//! The node's Lease in kube-node-lease, renewed at every heartbeat.

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};

const NAMESPACE: &str = "kube-node-lease";

/// The node's lease, created on first renewal.
pub struct Lease {
    api: Api<LeaseObject>,
    name: String,
    owner: OwnerReference,
    /// `spec.leaseDurationSeconds`.
    duration_seconds: i32,
    current: Option<LeaseObject>,
}

impl Lease {
    /// The lease for `node`, owned by it (so it goes when the Node goes), of `duration`.
    pub fn new(client: kube::Client, node: &Node, duration: std::time::Duration) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: name.clone(),
            uid: node.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        };
        Self {
            api: Api::namespaced(client, NAMESPACE),
            name,
            owner,
            duration_seconds: i32::try_from(duration.as_secs()).unwrap_or(i32::MAX),
            current: None,
        }
    }

    /// Renews (or creates) the lease.
    pub async fn renew(&mut self) -> Result<(), kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let current = match self.current.take() {
            Some(lease) => Some(lease),
            None => self.api.get_opt(&self.name).await?,
        };
        let result = match current {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.renew_time = Some(now);
                spec.holder_identity = Some(self.name.clone());
                spec.lease_duration_seconds = Some(self.duration_seconds);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            None => {
                let lease = LeaseObject {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        owner_references: Some(vec![self.owner.clone()]),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.name.clone()),
                        lease_duration_seconds: Some(self.duration_seconds),
                        renew_time: Some(now),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
        };
        self.current = Some(result?);
        Ok(())
    }
}
