//! What a runtime reports about a running container that did not end it (a request its guest
//! failed): a Warning event on the pod and a line in the agent's log, rate-limited per
//! container so that a guest failing every request cannot flood the API server or the log.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Warnings a container may report at once before the rate applies, as the kubelet's event
/// spam filter lets a burst through.
pub const WARNING_BURST: u32 = 10;
/// After a burst, one warning per container per this interval.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// A warning about a running container, for the pod's events and the agent's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The container it is about.
    pub container: String,
    /// The event's reason, in CamelCase.
    pub reason: std::borrow::Cow<'static, str>,
    /// What happened, in one line; says how many warnings were left out before it.
    pub message: String,
}

/// Where a runtime sends a container's warnings; cheap to clone (the instances of one
/// container share its rate).
#[derive(Debug, Clone)]
pub struct Warnings {
    container: Arc<str>,
    to: Option<mpsc::Sender<Warning>>,
    bucket: Arc<Mutex<Bucket>>,
}

/// A token bucket: [`WARNING_BURST`] tokens, one more every [`WARNING_INTERVAL`].
#[derive(Debug)]
struct Bucket {
    tokens: u32,
    refilled: Instant,
    left_out: u64,
}

impl Bucket {
    /// Takes a token if there is one; otherwise counts the warning as left out.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_nanos() / WARNING_INTERVAL.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(WARNING_BURST);
            self.refilled = if self.tokens == WARNING_BURST {
                now
            } else {
                self.refilled + WARNING_INTERVAL * earned
            };
        }
        if self.tokens == 0 {
            self.left_out = self.left_out.saturating_add(1);
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.left_out))
    }
}

impl Warnings {
    /// Warnings about `container`, sent to `to` (the pod's supervisor).
    pub fn new(container: &str, to: mpsc::Sender<Warning>) -> Self {
        Self {
            container: container.into(),
            to: Some(to),
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: WARNING_BURST,
                refilled: Instant::now(),
                left_out: 0,
            })),
        }
    }

    /// Warnings nobody reads (a runtime driven outside a pod, in tests).
    pub fn discarded() -> Self {
        let mut warnings = Self::new("", mpsc::channel(1).0);
        warnings.to = None;
        warnings
    }

    /// The container the warnings are about.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Passes on a warning another process already rate-limited (a runtime worker's).
    pub(crate) fn forward(&self, reason: String, message: String) {
        if let Some(to) = &self.to {
            let _ = to.try_send(Warning {
                container: self.container.to_string(),
                reason: reason.into(),
                message,
            });
        }
    }

    /// Reports a warning unless the container has used up its rate; then it is counted and the
    /// next one sent says how many were left out. Never waits.
    pub fn warn(&self, reason: &'static str, message: impl Into<String>) {
        let Some(to) = &self.to else { return };
        let taken = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(Instant::now());
        let Some(left_out) = taken else { return };
        let mut message = message.into();
        if left_out > 0 {
            message.push_str(&format!(
                " ({left_out} similar warnings were left out before this one)"
            ));
        }
        // A full queue means the supervisor is behind: dropping is the rate limit's job too.
        let _ = to.try_send(Warning {
            container: self.container.to_string(),
            reason: reason.into(),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_one_per_interval_saying_how_many_were_left_out() {
        let (tx, mut rx) = mpsc::channel(64);
        let warnings = Warnings::new("web", tx);
        for i in 0..25 {
            warnings.warn("RequestFailed", format!("request {i}"));
        }
        let mut sent = Vec::new();
        while let Ok(w) = rx.try_recv() {
            sent.push(w.message);
        }
        assert_eq!(sent.len(), WARNING_BURST as usize);
        assert_eq!(sent[0], "request 0");

        tokio::time::advance(WARNING_INTERVAL / 2).await;
        warnings.warn("RequestFailed", "too early");
        assert!(rx.try_recv().is_err(), "no token before the interval");

        tokio::time::advance(WARNING_INTERVAL / 2).await;
        warnings.warn("RequestFailed", "request 26");
        let next = rx.try_recv().expect("a token after the interval");
        assert_eq!(next.container, "web");
        assert_eq!(
            next.message,
            "request 26 (16 similar warnings were left out before this one)"
        );

        tokio::time::advance(WARNING_INTERVAL * 1000).await;
        for _ in 0..WARNING_BURST + 1 {
            warnings.warn("RequestFailed", "again");
        }
        let mut again = 0;
        while rx.try_recv().is_ok() {
            again += 1;
        }
        assert_eq!(
            again, WARNING_BURST,
            "a long quiet refills the burst, no more"
        );
    }

    #[tokio::test]
    async fn a_slow_reader_never_blocks_the_guest() {
        let (tx, mut rx) = mpsc::channel(1);
        let warnings = Warnings::new("web", tx);
        for _ in 0..1000 {
            warnings.warn("RequestFailed", "x");
        }
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "the rest were dropped, not queued");
        Warnings::discarded().warn("RequestFailed", "to nobody");
    }
}
