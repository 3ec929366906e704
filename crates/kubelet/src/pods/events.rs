//! Pod events sent as the kubelet's event recorder sends them: off the pod's path (a supervisor
//! never waits for the API server to take an event), through a queue of at most
//! [`MAX_QUEUED_EVENTS`] (the kubelet's broadcaster's; when it is full, events are dropped, with
//! a warning at the first and each 1,000th), in order, by one task. A repeat of (pod, reason, message) raises the count of the
//! Event already sent while it is remembered (the last [`MAX_REMEMBERED_EVENTS`], as the
//! kubelet's correlator's cache). Writes to the API server are limited to `--event-qps` a
//! second with bursts of `--event-burst` ([`EventRate`], the kubelet's flags and defaults); the
//! queue holds what waits for its turn.

use super::host::PodEvent;
use crate::ttl_cache::TtlCache;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

/// Events waiting to be sent, at most (the kubelet's `maxQueuedEvents`).
pub const MAX_QUEUED_EVENTS: usize = 1000;
/// Events remembered to count their repeats, at most (the kubelet's `maxLruCacheEntries`).
pub const MAX_REMEMBERED_EVENTS: usize = 4096;
/// How long a sent event is remembered for its repeats (the Event's own time to live on the
/// API server, `--event-ttl`, is one hour).
const REMEMBERED_FOR: Duration = Duration::from_secs(3600);

/// How fast events are written to the API server (`--event-qps`, `--event-burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRate {
    /// Writes a second; 0: unlimited.
    pub qps: u32,
    /// Writes at once after a quiet time.
    pub burst: u32,
}

impl Default for EventRate {
    /// The kubelet's: 50 a second, bursts of 100.
    fn default() -> Self {
        Self {
            qps: 50,
            burst: 100,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `qps` a second.
struct Bucket {
    rate: EventRate,
    tokens: f64,
    refilled: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: EventRate) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            refilled: tokio::time::Instant::now(),
        }
    }

    /// Waits for a token (at once when unlimited).
    async fn take(&mut self) {
        if self.rate.qps == 0 {
            return;
        }
        let qps = f64::from(self.rate.qps);
        let burst = f64::from(self.rate.burst.max(1));
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * qps).min(burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / qps);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.refilled = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// An event's identity for aggregation: (pod uid, reason, message).
type EventKey = (String, String, String);

/// What the sending task is asked to do.
enum Queued {
    /// Send `event` about `pod`, which happened at `at`.
    Send {
        pod: Box<ObjectReference>,
        event: PodEvent,
        at: Time,
    },
    /// Forget the events of the pod with this uid (it is gone).
    Forget(String),
    /// Say when everything queued before has been sent.
    Flush(oneshot::Sender<()>),
}

/// Sends pod events in the background; dropping it stops the sending.
pub struct EventRecorder {
    queue: mpsc::Sender<Queued>,
    /// Events dropped so far (logged at the first and every 1,000th, not each).
    dropped: AtomicU64,
    _sending: AbortOnDropHandle<()>,
}

impl EventRecorder {
    /// A recorder sending through `client` at `rate`, as the kubelet of `node_name`.
    pub fn new(client: kube::Client, node_name: String, rate: EventRate) -> Self {
        let (queue, queued) = mpsc::channel(MAX_QUEUED_EVENTS);
        let sender = Sender {
            client,
            node_name,
            sent: TtlCache::new(MAX_REMEMBERED_EVENTS),
            bucket: Bucket::new(rate),
        };
        Self {
            queue,
            dropped: AtomicU64::new(0),
            _sending: AbortOnDropHandle::new(tokio::spawn(sender.run(queued))),
        }
    }

    /// Queues `event` about `pod` (dropped, with a warning, when the queue is full).
    pub fn record(&self, pod: &Pod, event: PodEvent) {
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name_any()),
            namespace: pod.namespace(),
            uid: pod.uid(),
            field_path: event
                .container
                .as_ref()
                .map(|c| format!("spec.containers{{{c}}}")),
            ..Default::default()
        };
        let queued = Queued::Send {
            pod: Box::new(involved),
            event,
            at: super::status::now(),
        };
        if let Err(mpsc::error::TrySendError::Full(Queued::Send { event, .. })) =
            self.queue.try_send(queued)
        {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped % 1000 == 1 {
                tracing::warn!(reason = %event.reason, dropped, "dropping an event: {MAX_QUEUED_EVENTS} are already waiting to be sent (the API server is slow or unreachable)");
            }
        }
    }

    /// Forgets the events of pod `uid` (it is gone), after those queued before.
    pub fn forget(&self, uid: String) {
        // When the queue is full the entries age out of the bounded memory instead.
        let _ = self.queue.try_send(Queued::Forget(uid));
    }

    /// Waits until the events queued so far are sent, for at most `deadline` (the agent is
    /// stopping: the last events of its pods are worth a moment).
    pub async fn flush(&self, deadline: Duration) {
        let (done, sent) = oneshot::channel();
        let flushed = async {
            if self.queue.send(Queued::Flush(done)).await.is_ok() {
                let _ = sent.await;
            }
        };
        if tokio::time::timeout(deadline, flushed).await.is_err() {
            tracing::warn!("stopping with events not yet sent after {deadline:?}");
        }
    }
}

/// The sending task's state.
struct Sender {
    client: kube::Client,
    node_name: String,
    /// (pod uid, reason, message) -> (event name, count) of the events sent.
    sent: TtlCache<EventKey, (String, i32)>,
    /// Paces the writes.
    bucket: Bucket,
}

impl Sender {
    async fn run(mut self, mut queued: mpsc::Receiver<Queued>) {
        while let Some(next) = queued.recv().await {
            match next {
                Queued::Send { pod, event, at } => self.send(pod, event, at).await,
                Queued::Forget(uid) => self.sent.retain(|(u, _, _), _| *u != uid),
                Queued::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Raises the count of the same event sent before, or creates the Event.
    async fn send(&mut self, pod: Box<ObjectReference>, event: PodEvent, at: Time) {
        let ns = pod.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let key = (
            pod.uid.clone().unwrap_or_default(),
            event.reason.clone(),
            event.message.clone(),
        );
        self.bucket.take().await;
        if let Some((name, count)) = self.sent.get(&key) {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": at});
            if api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .is_ok()
            {
                self.sent.insert(key, (name, count + 1), REMEMBERED_FOR);
                return;
            }
        }
        let name = format!(
            "{}.{:x}",
            pod.name.as_deref().unwrap_or_default(),
            jiff::Timestamp::now().as_nanosecond()
        );
        let object = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns),
                ..Default::default()
            },
            involved_object: *pod,
            reason: Some(event.reason),
            message: Some(event.message),
            type_: Some(event.kind.into()),
            count: Some(1),
            first_timestamp: Some(at.clone()),
            last_timestamp: Some(at),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node_name.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node_name.clone()),
            ..Default::default()
        };
        let reason = object.reason.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => self.sent.insert(key, (name, 1), REMEMBERED_FOR),
            Err(e) => tracing::warn!(error = %e, %reason, "recording an event failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// An API server that answers each request once `open` lets it through, counting the
    /// requests that arrived and recording (method, body) of those answered.
    struct FakeApi {
        arrived: AtomicUsize,
        answered: Mutex<Vec<(String, serde_json::Value)>>,
        open: tokio::sync::Semaphore,
    }

    fn client(api: Arc<FakeApi>) -> kube::Client {
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                api.arrived.fetch_add(1, Ordering::SeqCst);
                let _turn = api.open.acquire().await?;
                let method = request.method().to_string();
                let body = request.into_body().collect().await?.to_bytes();
                let body: serde_json::Value = serde_json::from_slice(&body)?;
                let answer = if method == "POST" {
                    body.clone()
                } else {
                    serde_json::json!({"metadata": {}, "involvedObject": {}})
                };
                api.answered.lock().unwrap().push((method, body));
                let answer = kube::client::Body::from(serde_json::to_vec(&answer)?);
                Ok::<_, BoxError>(http::Response::builder().status(201).body(answer)?)
            }
        });
        kube::Client::new(service, "default")
    }

    fn fake_api(open: usize) -> Arc<FakeApi> {
        Arc::new(FakeApi {
            arrived: AtomicUsize::new(0),
            answered: Mutex::default(),
            open: tokio::sync::Semaphore::new(open),
        })
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn repeats_raise_the_count_of_the_event_sent() {
        let api = fake_api(usize::MAX >> 4);
        let recorder = EventRecorder::new(client(api.clone()), "node".into(), EventRate::default());
        for message in ["again", "again", "again", "other"] {
            recorder.record(&pod(), PodEvent::warning("main", "BackOff", message.into()));
        }
        recorder.flush(Duration::from_secs(10)).await;
        let answered = api.answered.lock().unwrap().clone();
        let sent: Vec<(&str, Option<i64>)> = answered
            .iter()
            .map(|(method, body)| (method.as_str(), body["count"].as_i64()))
            .collect();
        assert_eq!(
            sent,
            [
                ("POST", Some(1)),
                ("PATCH", Some(2)),
                ("PATCH", Some(3)),
                ("POST", Some(1))
            ]
        );
        assert_eq!(
            answered[0].1["involvedObject"]["fieldPath"],
            "spec.containers{main}"
        );
    }

    #[tokio::test]
    async fn a_stalled_api_server_holds_at_most_the_queue_and_the_pod_never_waits() {
        let api = fake_api(0);
        let recorder = EventRecorder::new(client(api.clone()), "node".into(), EventRate::default());
        let event = |i: usize| PodEvent::normal("main", "Started", format!("event {i}"));
        recorder.record(&pod(), event(0));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while api.arrived.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first event was not sent"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The first waits in the API server; the queue takes MAX_QUEUED_EVENTS more, at once.
        let recording = std::time::Instant::now();
        for i in 1..=MAX_QUEUED_EVENTS + 5 {
            recorder.record(&pod(), event(i));
        }
        assert!(recording.elapsed() < Duration::from_secs(1));
        api.open.add_permits(usize::MAX >> 4);
        recorder.flush(Duration::from_secs(30)).await;
        let answered = api.answered.lock().unwrap();
        assert_eq!(
            answered.len(),
            1 + MAX_QUEUED_EVENTS,
            "the 5 past the queue were dropped"
        );
        assert_eq!(
            answered.last().unwrap().1["message"],
            format!("event {MAX_QUEUED_EVENTS}")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_keep_to_the_rate_after_a_burst() {
        let mut bucket = Bucket::new(EventRate { qps: 10, burst: 3 });
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..6 {
            bucket.take().await;
            times.push(start.elapsed().as_millis());
        }
        assert_eq!(times, [0, 0, 0, 100, 200, 300]);
        // A quiet second refills the burst, no more.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet = start.elapsed().as_millis();
        for _ in 0..4 {
            bucket.take().await;
        }
        assert_eq!(start.elapsed().as_millis() - quiet, 100);
        let mut unlimited = Bucket::new(EventRate { qps: 0, burst: 0 });
        let before = tokio::time::Instant::now();
        for _ in 0..1000 {
            unlimited.take().await;
        }
        assert_eq!(before.elapsed(), Duration::ZERO);
    }
}
