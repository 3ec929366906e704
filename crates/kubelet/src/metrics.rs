//! The node agent's own metrics, served on the kubelet API's `/metrics` in the Prometheus
//! exposition format (OpenMetrics text), under the kubelet's names where it has one: running
//! pods and containers, container starts and start errors, pod start duration, image pulls, and
//! the API server requests the agent makes by response code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

/// `container_type` of a started container, as the kubelet labels it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerType {
    container_type: &'static str,
}

/// A failed container start: the waiting reason and the container type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartFailure {
    code: String,
    container_type: &'static str,
}

/// How an image was had: pulled, already present, or failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullOutcome {
    outcome: &'static str,
}

/// An API server response code, or `<error>` when no response came.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseCode {
    code: String,
}

/// The node agent's metrics (one set per process, as Prometheus clients keep them).
pub struct Metrics {
    registry: Registry,
    running_pods: Gauge,
    running_containers: Gauge,
    started_containers: Family<ContainerType, Counter>,
    start_errors: Family<StartFailure, Counter>,
    pod_start_duration: Histogram,
    image_pulls: Family<PullOutcome, Counter>,
    image_pull_duration: Histogram,
    api_requests: Family<ResponseCode, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn container_type(init: bool) -> &'static str {
    if init { "init_container" } else { "container" }
}

impl Metrics {
    fn new() -> Self {
        let seconds = || {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
        };
        let metrics = Self {
            registry: Registry::default(),
            running_pods: Gauge::default(),
            running_containers: Gauge::default(),
            started_containers: Family::default(),
            start_errors: Family::default(),
            pod_start_duration: seconds(),
            image_pulls: Family::default(),
            image_pull_duration: seconds(),
            api_requests: Family::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            "kubelet_running_pods",
            "Pods with a running container",
            metrics.running_pods.clone(),
        );
        registry.register(
            "kubelet_running_containers",
            "Running containers",
            metrics.running_containers.clone(),
        );
        registry.register(
            "kubelet_started_containers",
            "Containers started",
            metrics.started_containers.clone(),
        );
        registry.register(
            "kubelet_started_containers_errors",
            "Containers that failed to start, by waiting reason",
            metrics.start_errors.clone(),
        );
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Time from the node agent seeing a pod to its first app container running",
            metrics.pod_start_duration.clone(),
        );
        registry.register(
            "krustlet_image_pulls",
            "Images had for containers: pulled, already present, or failed",
            metrics.image_pulls.clone(),
        );
        registry.register(
            "krustlet_image_pull_duration_seconds",
            "Time to pull an image that was not present",
            metrics.image_pull_duration.clone(),
        );
        registry.register(
            "rest_client_requests",
            "Requests to the API server, by response code",
            metrics.api_requests.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts a container started (`init` for an init container).
    pub fn container_started(&self, init: bool) {
        self.started_containers
            .get_or_create(&ContainerType {
                container_type: container_type(init),
            })
            .inc();
    }

    /// Counts a container that failed to start with waiting reason `code`.
    pub fn container_start_failed(&self, init: bool, code: &str) {
        self.start_errors
            .get_or_create(&StartFailure {
                code: code.to_string(),
                container_type: container_type(init),
            })
            .inc();
    }

    /// Records a pod's start duration.
    pub fn pod_started(&self, after: Duration) {
        self.pod_start_duration.observe(after.as_secs_f64());
    }

    /// Counts an image pulled in `took`.
    pub fn image_pulled(&self, took: Duration) {
        self.image_pulls
            .get_or_create(&PullOutcome { outcome: "pulled" })
            .inc();
        self.image_pull_duration.observe(took.as_secs_f64());
    }

    /// Counts an image found present.
    pub fn image_present(&self) {
        self.image_pulls
            .get_or_create(&PullOutcome { outcome: "present" })
            .inc();
    }

    /// Counts a failed pull.
    pub fn image_pull_failed(&self) {
        self.image_pulls
            .get_or_create(&PullOutcome { outcome: "failed" })
            .inc();
    }

    /// Counts an API server response with status `code`, or a request that got none.
    pub fn api_request(&self, code: Option<u16>) {
        let code = code.map_or_else(|| "<error>".to_string(), |c| c.to_string());
        self.api_requests
            .get_or_create(&ResponseCode { code })
            .inc();
    }

    /// The metrics as OpenMetrics text, with the running pods and containers as given.
    pub fn render(&self, running_pods: usize, running_containers: usize) -> String {
        self.running_pods
            .set(i64::try_from(running_pods).unwrap_or(i64::MAX));
        self.running_containers
            .set(i64::try_from(running_containers).unwrap_or(i64::MAX));
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        text
    }
}

/// For a tower `map_result` on the Kubernetes client: counts each response by status code.
pub fn count_api_response<B, E>(
    result: Result<http::Response<B>, E>,
) -> Result<http::Response<B>, E> {
    metrics().api_request(result.as_ref().ok().map(|r| r.status().as_u16()));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_the_kubelet_metrics() {
        let metrics = Metrics::new();
        metrics.container_started(false);
        metrics.container_start_failed(false, "CreateContainerError");
        metrics.pod_started(Duration::from_millis(3));
        metrics.api_request(Some(200));
        let text = metrics.render(2, 3);
        assert!(text.contains("kubelet_running_pods 2"), "{text}");
        assert!(text.contains("kubelet_running_containers 3"), "{text}");
        assert!(
            text.contains("kubelet_started_containers_total{container_type=\"container\"} 1"),
            "{text}"
        );
        assert!(text.contains("code=\"CreateContainerError\""), "{text}");
        assert!(
            text.contains("kubelet_pod_start_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("rest_client_requests_total{code=\"200\"} 1"),
            "{text}"
        );
    }
}
