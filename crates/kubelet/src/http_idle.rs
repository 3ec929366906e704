//! When an HTTP connection is idle: no request in flight (an answer still streaming counts as
//! in flight) for some time. Servers close such connections, as Go's and nginx's close idle
//! keep-alive connections; both the kubelet API and the ports guests serve use this.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Requests in flight on a connection, and when the last one ended (or the connection began).
pub struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    /// How long no request has been in flight (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// One request in flight, until dropped (with its answer's body: see [`Tracked`]).
pub struct Busy(Arc<Activity>);

impl Busy {
    /// A request of the connection `activity` tracks has begun.
    pub fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that keeps its request counted in flight while it streams.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        busy: Busy,
    }
}

impl<B> Tracked<B> {
    /// `body`, its request in flight until it is dropped.
    pub fn new(body: B, busy: Busy) -> Self {
        Self { body, busy }
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Drives `connection` to its end. Once `activity` has been idle for `idle`, asks it to shut
/// down (`shut_down`: hyper's `graceful_shutdown`) and gives it `grace` to do so; once `stop`
/// completes, asks the same and lets the requests in flight finish.
pub async fn close_when_idle<C: Future>(
    mut connection: Pin<&mut C>,
    activity: &Activity,
    idle: Duration,
    grace: Duration,
    stop: impl Future<Output = ()>,
    shut_down: impl Fn(Pin<&mut C>),
) {
    let mut check = tokio::time::interval((idle / 6).max(Duration::from_millis(10)));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = &mut stop => {
                shut_down(connection.as_mut());
                connection.await;
                return;
            }
            _ = check.tick() => {
                if activity.idle_for() > idle {
                    shut_down(connection.as_mut());
                    let _ = tokio::time::timeout(grace, connection.as_mut()).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streaming_answer_keeps_its_connection_busy() {
        let activity = Arc::new(Activity::default());
        let busy = Busy::new(activity.clone());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        drop(busy);
        std::thread::sleep(Duration::from_millis(5));
        assert!(activity.idle_for() >= Duration::from_millis(5));
    }
}
