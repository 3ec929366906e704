//! Container states and the pod status computed from them, with the kubelet's phase rules,
//! conditions, reasons and messages.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The current time as a Kubernetes timestamp (second precision, as the kubelet writes).
pub fn now() -> Time {
    Time(
        jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now()),
    )
}

/// A waiting state.
pub fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

/// A running state since `started`.
pub fn running(started: Time) -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(started),
        }),
        ..Default::default()
    }
}

/// A terminated state.
pub fn terminated(
    code: i32,
    reason: String,
    message: Option<String>,
    started: Option<Time>,
    container_id: Option<String>,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some(reason),
            message,
            started_at: started,
            finished_at: Some(now()),
            container_id,
            signal: None,
        }),
        ..Default::default()
    }
}

fn is_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}

fn terminated_code(s: &ContainerStatus) -> Option<i32> {
    s.state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .map(|t| t.exit_code)
}

fn has_run(s: &ContainerStatus) -> bool {
    s.last_state
        .as_ref()
        .is_some_and(|st| st.terminated.is_some())
}

/// What the supervisor knows, for computing the pod status.
pub struct Snapshot<'a> {
    /// Init container statuses, in order.
    pub init: &'a [ContainerStatus],
    /// App container statuses.
    pub containers: &'a [ContainerStatus],
    /// `spec.restartPolicy`.
    pub restart_policy: &'a str,
    /// Whether the pod will start no more containers (all done, or failed for good).
    pub finished: bool,
    /// The node's IP.
    pub node_ip: &'a str,
    /// The pod's IPs, the primary first (none while its own network is not attached yet).
    pub pod_ips: &'a [String],
    /// When the node agent took the pod on.
    pub start_time: &'a Time,
    /// The status written last, to keep transition times.
    pub previous: Option<&'a PodStatus>,
}

/// The pod phase, as the kubelet's getPhase computes it.
pub fn phase(snapshot: &Snapshot<'_>) -> &'static str {
    let init_failed = snapshot
        .init
        .iter()
        .any(|s| terminated_code(s).is_some_and(|c| c != 0));
    if init_failed && snapshot.finished {
        return "Failed";
    }
    let init_done = snapshot.init.iter().all(|s| terminated_code(s) == Some(0));
    if !init_done {
        return "Pending";
    }
    let (mut waiting, mut running, mut failed) = (0, 0, 0);
    for s in snapshot.containers {
        match (is_running(s), terminated_code(s)) {
            (true, _) => running += 1,
            (_, Some(0)) => {}
            (_, Some(_)) => failed += 1,
            _ if has_run(s) => running += 1,
            _ => waiting += 1,
        }
    }
    match () {
        _ if waiting > 0 => "Pending",
        _ if running > 0 => "Running",
        _ if snapshot.restart_policy == "Always" && !snapshot.finished => "Running",
        _ if failed == 0 => "Succeeded",
        _ if snapshot.restart_policy == "OnFailure" && !snapshot.finished => "Running",
        _ => "Failed",
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: Option<&PodStatus>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.map(String::from),
        message,
        last_transition_time: Some(since),
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The full pod status the node agent owns (PodScheduled is the scheduler's and is left alone).
pub fn pod_status(snapshot: &Snapshot<'_>) -> PodStatus {
    let phase = phase(snapshot);
    let previous = snapshot.previous;
    let completed = matches!(phase, "Succeeded" | "Failed");
    let incomplete_init: Vec<&str> = snapshot
        .init
        .iter()
        .filter(|s| terminated_code(s) != Some(0))
        .map(|s| s.name.as_str())
        .collect();
    let unready: Vec<&str> = snapshot
        .containers
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let initialized = if incomplete_init.is_empty() || completed && phase == "Succeeded" {
        condition("Initialized", true, None, None, previous)
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete_init.join(" ")
            )),
            previous,
        )
    };
    let ready = |kind: &str| {
        if completed {
            condition(kind, false, Some("PodCompleted"), None, previous)
        } else if unready.is_empty() {
            condition(kind, true, None, None, previous)
        } else {
            condition(
                kind,
                false,
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
                previous,
            )
        }
    };
    let sandbox = condition(
        "PodReadyToStartContainers",
        !completed || snapshot.containers.iter().any(is_running),
        None,
        None,
        previous,
    );
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![
            sandbox,
            initialized,
            ready("ContainersReady"),
            ready("Ready"),
        ]),
        host_ip: Some(snapshot.node_ip.into()),
        host_ips: Some(vec![HostIP {
            ip: snapshot.node_ip.into(),
        }]),
        pod_ip: snapshot.pod_ips.first().cloned(),
        pod_ips: (!snapshot.pod_ips.is_empty()).then(|| {
            snapshot
                .pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect()
        }),
        start_time: Some(snapshot.start_time.clone()),
        init_container_statuses: (!snapshot.init.is_empty()).then(|| snapshot.init.to_vec()),
        container_statuses: Some(snapshot.containers.to_vec()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: ContainerState, ran_before: bool) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            state: Some(state),
            last_state: ran_before.then(|| terminated(1, "Error".into(), None, None, None)),
            ..Default::default()
        }
    }

    fn phase_of(containers: &[ContainerStatus], policy: &str, finished: bool) -> &'static str {
        let t = now();
        phase(&Snapshot {
            init: &[],
            containers,
            restart_policy: policy,
            finished,
            node_ip: "10.0.0.1",
            pod_ips: &[],
            start_time: &t,
            previous: None,
        })
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(
            phase_of(
                &[status(waiting("ContainerCreating", None), false)],
                "Always",
                false
            ),
            "Pending"
        );
        assert_eq!(
            phase_of(&[status(running(now()), false)], "Never", false),
            "Running"
        );
        assert_eq!(
            phase_of(
                &[status(
                    terminated(0, "Completed".into(), None, None, None),
                    false
                )],
                "Never",
                true
            ),
            "Succeeded"
        );
        assert_eq!(
            phase_of(
                &[status(
                    terminated(3, "Error".into(), None, None, None),
                    false
                )],
                "Never",
                true
            ),
            "Failed"
        );
        assert_eq!(
            phase_of(
                &[status(waiting("CrashLoopBackOff", None), true)],
                "Always",
                false
            ),
            "Running"
        );
        assert_eq!(
            phase_of(
                &[status(
                    terminated(0, "Completed".into(), None, None, None),
                    false
                )],
                "OnFailure",
                true
            ),
            "Succeeded"
        );
    }
}
