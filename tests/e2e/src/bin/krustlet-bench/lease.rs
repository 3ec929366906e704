//! The node's heartbeat as the control plane sees it: its Lease in `kube-node-lease`, polled
//! in the background for the longest time between two renewals.

use k8s_openapi::api::coordination::v1::Lease;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the Lease is read; well under the kubelet's 10 s renewal interval, so no
/// renewal goes unseen.
const POLL: Duration = Duration::from_secs(1);

/// Polls a node's Lease until dropped.
pub struct LeaseWatch {
    longest_gap: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseWatch {
    /// Starts polling the Lease of `node`.
    pub fn start(client: kube::Client, node: &str) -> Self {
        let leases = kube::Api::<Lease>::namespaced(client, "kube-node-lease");
        let node = node.to_string();
        let longest_gap = Arc::new(Mutex::new(Duration::ZERO));
        let task = {
            let longest_gap = longest_gap.clone();
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    let renewed = leases
                        .get_opt(&node)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|lease| lease.spec?.renew_time);
                    if let Some(renewed) = renewed.map(|t| t.0)
                        && let Some(previous) = last.replace(renewed)
                        && renewed > previous
                    {
                        let gap = Duration::try_from(renewed.duration_since(previous))
                            .unwrap_or_default();
                        let mut longest = longest_gap.lock().unwrap_or_else(|p| p.into_inner());
                        *longest = (*longest).max(gap);
                    }
                    tokio::time::sleep(POLL).await;
                }
            })
        };
        Self { longest_gap, task }
    }

    /// The longest time between two renewals since the last call.
    pub fn take_longest_gap(&self) -> Duration {
        std::mem::take(&mut *self.longest_gap.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
