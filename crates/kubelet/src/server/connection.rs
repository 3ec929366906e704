//! One kubelet API connection, bounded in time at every step: a client has
//! [`ApiLimits::handshake_timeout`] to finish its TLS handshake, as long again to start its first
//! request and to send each request's headers, and a connection with no request in flight is
//! closed after [`IDLE_TIMEOUT`]. A streaming answer (`kubectl logs -f`) is a request in flight
//! for as long as it streams. Failed accepts back off ([`AcceptBackoff`]).

use crate::http_idle::{Activity, Busy, Tracked, close_when_idle};
use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tower::ServiceExt;

/// How long a connection may stay open with no request in flight (the keep-alive idle time of
/// Go's HTTP servers, which the kubelet's is).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often an idle HTTP/2 client is pinged, and how long its answer may take.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Limits on the kubelet API's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// The most connections served at once (`--kubelet-api-max-connections`).
    pub max_connections: usize,
    /// How long a client has to finish its TLS handshake, then to start its first request, and
    /// to send each request's headers (`--kubelet-api-handshake-timeout`).
    pub handshake_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves one accepted connection to its end. `authenticated` names the user of the client's
/// verified certificate, put in every request's extensions.
pub async fn serve<P: Clone + Send + Sync + 'static>(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    limits: ApiLimits,
    authenticated: impl FnOnce(&rustls::ServerConnection) -> P,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(Ok(stream)) = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await
    else {
        return;
    };
    let peer = authenticated(stream.get_ref().1);
    // A client that sends nothing after its handshake holds no connection for long.
    let mut stream = tokio::io::BufReader::new(stream);
    match tokio::time::timeout(limits.handshake_timeout, stream.fill_buf()).await {
        Ok(Ok(first)) if !first.is_empty() => {}
        _ => return,
    }
    let activity = Arc::new(Activity::default());
    let tracked = activity.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let busy = Busy::new(tracked.clone());
            request.extensions_mut().insert(peer.clone());
            let answered = app.clone().oneshot(request.map(Body::new));
            async move {
                let response = answered.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Body::new(Tracked::new(body, busy))),
                )
            }
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    close_when_idle(
        connection,
        &activity,
        IDLE_TIMEOUT,
        limits.handshake_timeout,
        std::future::pending(),
        |c| c.graceful_shutdown(),
    )
    .await;
}

/// Failed accepts (out of file descriptors, a connection reset before it was taken) are retried
/// after a pause that doubles from 5 ms to 1 s, as Go's net/http does, and logged at most every
/// [`AcceptBackoff::LOG_EVERY`] with the count of those not logged.
#[derive(Default)]
pub struct AcceptBackoff {
    delay: Option<Duration>,
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    /// An accept succeeded: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.delay = None;
    }

    /// An accept failed: logs it (rate-limited) and waits before the next.
    pub async fn failed(&mut self, error: &std::io::Error) {
        let delay = self.delay.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.delay = Some(delay);
        if self.logged.is_none_or(|at| at.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(
                error = %error,
                similar_since_last_warning = self.unlogged,
                "accepting a kubelet API connection failed; retrying in {delay:?}"
            );
            self.logged = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn accept_failures_back_off_to_a_second() {
        let mut backoff = AcceptBackoff::default();
        let error = std::io::Error::from_raw_os_error(24);
        let mut waits = Vec::new();
        for _ in 0..10 {
            let before = tokio::time::Instant::now();
            backoff.failed(&error).await;
            waits.push(before.elapsed().as_millis());
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff.unlogged, 9, "one warning for the burst");
        backoff.succeeded();
        let before = tokio::time::Instant::now();
        backoff.failed(&error).await;
        assert_eq!(before.elapsed().as_millis(), 5);
    }
}
