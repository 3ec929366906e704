//! The one place a pod's status is written, with one retry policy for every path (running,
//! rejection, deletion, shutdown): a status equal to the last one written is not written again;
//! a failed write is tried again after a backoff (1 s doubling to 30 s), and a newer status
//! replaces the one waiting (so a burst of changes is one write); it gives up only when the pod
//! is gone from the API server, or when its caller's deadline passes.

use super::host::{PodHost, StatusError};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use std::time::Duration;
use tokio::time::Instant;

/// The wait before the first retry of a failed write.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What became of a status handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// It is the pod's status on the API server.
    Done,
    /// The write failed; it is tried again at [`StatusWriter::retry_at`].
    Pending,
    /// The pod is gone: nothing will be written for it any more.
    Gone,
}

/// One pod's status writer.
#[derive(Debug, Default)]
pub struct StatusWriter {
    published: Option<PodStatus>,
    /// When the status waiting to be written is tried next.
    retry_at: Option<Instant>,
    failures: u32,
    gone: bool,
    /// The API server's copy disagrees with `published`: write even an unchanged status.
    stale: bool,
}

impl StatusWriter {
    /// Writes `status` unless it was the last written, or a failed write's backoff has not
    /// passed (then `status` is what the next try writes).
    pub async fn write<H: PodHost>(&mut self, host: &H, pod: &Pod, status: &PodStatus) -> Written {
        if self.gone {
            return Written::Gone;
        }
        if !self.stale && self.published.as_ref() == Some(status) {
            self.retry_at = None;
            return Written::Done;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Written::Pending;
        }
        match host.write_status(pod, status).await {
            Ok(()) => {
                self.published = Some(status.clone());
                self.retry_at = None;
                self.failures = 0;
                self.stale = false;
                Written::Done
            }
            Err(StatusError::Gone) => {
                self.gone = true;
                self.retry_at = None;
                Written::Gone
            }
            Err(StatusError::Failed(e)) => {
                self.failures = self.failures.saturating_add(1);
                let delay = FIRST_RETRY
                    .saturating_mul(2u32.saturating_pow(self.failures.saturating_sub(1).min(16)))
                    .min(MAX_RETRY);
                tracing::warn!(error = %e, attempt = self.failures, "writing the pod's status failed; trying again in {delay:?}");
                self.retry_at = Some(Instant::now() + delay);
                Written::Pending
            }
        }
    }

    /// The status last written.
    pub fn published(&self) -> Option<&PodStatus> {
        self.published.as_ref()
    }

    /// Takes `status` as written: the API server has it already (a pod adopted after the
    /// agent restarted).
    pub fn assume_published(&mut self, status: PodStatus) {
        self.published = Some(status);
    }

    /// Compares the status the API server has (from a watch event) with the one written last:
    /// when the server's has no phase or other containers than written (the object was
    /// replaced, as a static pod's mirror pod is when deleted), the next write happens even if
    /// the status did not change. A phase that differs is not enough: watch events trail the
    /// writes, so the event of the previous write (`Pending`) often arrives after the next one
    /// (`Running`) was made.
    pub fn observe(&mut self, on_server: Option<&PodStatus>) {
        let Some(published) = &self.published else {
            return;
        };
        let outline = |s: Option<&PodStatus>| {
            let count = |l: Option<&Vec<_>>| l.map_or(0, Vec::len);
            (
                s.and_then(|s| s.phase.as_ref()).is_some(),
                count(s.and_then(|s| s.container_statuses.as_ref())),
                count(s.and_then(|s| s.init_container_statuses.as_ref())),
            )
        };
        if outline(on_server) != outline(Some(published)) {
            self.stale = true;
        }
    }

    /// When a failed write is tried again, if one waits.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Writes `status`, trying again with the backoff until it is written, the pod is gone, or
    /// `give_up` completes (the caller's deadline, or the pod's removal from the watch).
    pub async fn write_until<H: PodHost>(
        &mut self,
        host: &H,
        pod: &Pod,
        status: &PodStatus,
        give_up: impl Future<Output = ()>,
    ) -> Written {
        let mut give_up = std::pin::pin!(give_up);
        loop {
            let written = self.write(host, pod, status).await;
            let Some(at) = self.retry_at.filter(|_| written == Written::Pending) else {
                return written;
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = &mut give_up => return Written::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::host::PodEvent;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use std::sync::Mutex;

    /// A host whose status writes answer from a script, recording the statuses tried.
    #[derive(Default)]
    struct ScriptedHost {
        answers: Mutex<Vec<Result<(), StatusError>>>,
        tried: Mutex<Vec<(Instant, Option<String>)>>,
    }

    impl PodHost for ScriptedHost {
        async fn write_status(&self, _: &Pod, status: &PodStatus) -> Result<(), StatusError> {
            self.tried
                .lock()
                .unwrap()
                .push((Instant::now(), status.phase.clone()));
            let mut answers = self.answers.lock().unwrap();
            if answers.is_empty() {
                Ok(())
            } else {
                answers.remove(0)
            }
        }
        async fn record(&self, _: &Pod, _: PodEvent) {}
        async fn finish_deletion(&self, _: &Pod) {}
        async fn runtime_handler(&self, _: &str) -> Result<Option<String>, String> {
            Ok(None)
        }
        async fn config_map(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Option<std::sync::Arc<ConfigMap>>, String> {
            Ok(None)
        }
        async fn secret(&self, _: &str, _: &str) -> Result<Option<std::sync::Arc<Secret>>, String> {
            Ok(None)
        }
        async fn service_account_token(
            &self,
            _: &Pod,
            _: Option<String>,
            _: i64,
        ) -> Result<String, String> {
            Err("none".into())
        }
    }

    fn phase(phase: &str) -> PodStatus {
        PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }
    }

    fn failed() -> Result<(), StatusError> {
        Err(StatusError::Failed("the API server is away".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_and_the_latest_status_is_the_one_retried() {
        let host = ScriptedHost {
            answers: Mutex::new(vec![failed(), failed(), failed()]),
            ..Default::default()
        };
        let pod = Pod::default();
        let mut writer = StatusWriter::default();
        let began = Instant::now();
        assert_eq!(
            writer.write(&host, &pod, &phase("Pending")).await,
            Written::Pending
        );
        // Changes during the backoff wait for it: nothing is tried.
        assert_eq!(
            writer.write(&host, &pod, &phase("Running")).await,
            Written::Pending
        );
        assert_eq!(host.tried.lock().unwrap().len(), 1);
        let written = writer
            .write_until(&host, &pod, &phase("Running"), std::future::pending())
            .await;
        assert_eq!(written, Written::Done);
        let tried = host.tried.lock().unwrap().clone();
        let at: Vec<u64> = tried.iter().map(|(t, _)| (*t - began).as_secs()).collect();
        assert_eq!(at, [0, 1, 3, 7], "1 s, then 2 s, then 4 s");
        assert_eq!(tried.last().unwrap().1.as_deref(), Some("Running"));
        // Written once: the same status again is not written.
        assert_eq!(
            writer.write(&host, &pod, &phase("Running")).await,
            Written::Done
        );
        assert_eq!(host.tried.lock().unwrap().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn it_gives_up_when_the_pod_is_gone_or_the_caller_does() {
        let host = ScriptedHost {
            answers: Mutex::new(vec![failed(), Err(StatusError::Gone)]),
            ..Default::default()
        };
        let pod = Pod::default();
        let mut writer = StatusWriter::default();
        let written = writer
            .write_until(&host, &pod, &phase("Failed"), std::future::pending())
            .await;
        assert_eq!(written, Written::Gone);
        assert_eq!(
            writer.write(&host, &pod, &phase("Running")).await,
            Written::Gone
        );
        assert_eq!(host.tried.lock().unwrap().len(), 2, "nothing after gone");

        let always_failing = ScriptedHost {
            answers: Mutex::new((0..100).map(|_| failed()).collect()),
            ..Default::default()
        };
        let mut writer = StatusWriter::default();
        let began = Instant::now();
        let written = writer
            .write_until(
                &always_failing,
                &pod,
                &phase("Failed"),
                tokio::time::sleep(Duration::from_secs(100)),
            )
            .await;
        assert_eq!(written, Written::Pending);
        assert_eq!(began.elapsed(), Duration::from_secs(100));
        let tries = always_failing.tried.lock().unwrap().len();
        // 0, 1, 3, 7, 15, 31, 61, 91: the backoff stops doubling at 30 s.
        assert_eq!(tries, 8);
    }

    #[tokio::test]
    async fn a_status_the_api_server_lost_is_written_again_unchanged() {
        let host = ScriptedHost::default();
        let pod = Pod::default();
        let mut writer = StatusWriter::default();
        let with_container = |phase_name: &str| PodStatus {
            container_statuses: Some(vec![Default::default()]),
            ..phase(phase_name)
        };
        let running = with_container("Running");
        writer.write(&host, &pod, &running).await;
        // The API server reports what was written, or (trailing) what was written before:
        // nothing to do.
        writer.observe(Some(&running));
        writer.observe(Some(&with_container("Pending")));
        writer.write(&host, &pod, &running).await;
        assert_eq!(host.tried.lock().unwrap().len(), 1);
        // The object was replaced (a new mirror pod): the same status is written again, once.
        writer.observe(Some(&phase("Pending")));
        writer.write(&host, &pod, &running).await;
        writer.write(&host, &pod, &running).await;
        assert_eq!(host.tried.lock().unwrap().len(), 2);
    }
}
