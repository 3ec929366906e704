//! The TCP ports a guest serves on, and the HTTP/1.1 server on them. A pod on the node's
//! network shares its ports with every other such pod, so a port another pod holds is a clear
//! start failure rather than a surprise; a pod in a network namespace of its own listens there.

use crate::descriptors::ContainerDescriptors;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use kubelet::http_idle::{Activity, Busy, Tracked, close_when_idle};
use kubelet::netns::PodNetns;
use kubelet::runtime::{Network, ServeLimits, StartError};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Opens the pod's network namespace, when the container's `network` has one.
pub fn pod_netns(network: &Network) -> Result<Option<Arc<PodNetns>>, StartError> {
    let Some(path) = &network.netns else {
        return Ok(None);
    };
    PodNetns::open(path).map(Some).map_err(|e| {
        StartError::node(
            format!("opening the pod's network namespace {}", path.display()),
            e,
        )
    })
}

/// Binds every address, inside the pod's network namespace when it has one; a port already
/// taken fails the start with a message saying what to do.
pub fn bind(
    addrs: &[SocketAddr],
    netns: Option<&PodNetns>,
) -> Result<Vec<TcpListener>, StartError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let bound = match netns {
            Some(netns) => netns
                .enter(|| std::net::TcpListener::bind(addr))
                .and_then(|bound| bound),
            None => std::net::TcpListener::bind(addr),
        };
        let listener = bound
            .and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            })
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    StartError::PortInUse {
                        addr: *addr,
                        source: e,
                    }
                } else {
                    StartError::node(format!("listening on {addr}"), e)
                }
            })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// How long to wait after a failed accept (e.g. out of file descriptors).
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long an idle connection asked to close may take to do so.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Connections past the cap that are being told so at once, per container; more are closed
/// without an answer.
const MAX_REFUSING: usize = 64;
/// How long a connection past the cap is given to send its request before it is answered
/// (an answer before the request confuses HTTP clients), and to take the answer.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// The two ends of a served connection.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// The address the client reached.
    pub local: Option<SocketAddr>,
    /// The client's address.
    pub remote: SocketAddr,
}

/// Serves HTTP/1.1 on every listener, within `limits`: `handle` answers each request (its body
/// fails a read that brings nothing for `limits.body_read_timeout`), given the connection's
/// [`Addresses`]. Each connection holds a descriptor of the container's `descriptors`. A
/// connection past `limits.max_connections`, or that finds no descriptor, is answered 503 and
/// closed; one whose client takes longer than `limits.header_read_timeout` to send its
/// headers, or that has no request in flight for `limits.idle_timeout`, is closed. When `stop` is cancelled the
/// listeners close (the ports are free again), open connections finish the request in flight
/// and close, and this returns; aborting the task ends everything at once.
pub async fn serve_http<F, Fut, B, E>(
    listeners: Vec<TcpListener>,
    limits: ServeLimits,
    descriptors: Arc<ContainerDescriptors>,
    stop: CancellationToken,
    handle: F,
) where
    F: Fn(Request<ReadDeadline<Incoming>>, Addresses) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let handle = Arc::new(handle);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let busy = busy_answer(&format!(
        "this container has {} connections open, the most it may (--http-max-connections-per-container)",
        limits.max_connections
    ));
    let mut accepts = JoinSet::new();
    for listener in listeners {
        let (handle, stop, open, refusing, busy, descriptors) = (
            handle.clone(),
            stop.clone(),
            open.clone(),
            refusing.clone(),
            busy.clone(),
            descriptors.clone(),
        );
        accepts.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.cancelled() => break,
                };
                match accepted {
                    Ok((stream, remote)) => {
                        let held = open
                            .clone()
                            .try_acquire_owned()
                            .map_err(|_| busy.clone())
                            .and_then(|permit| {
                                let descriptor = descriptors
                                    .try_take(1)
                                    .map_err(|e| busy_answer(&e.to_string()))?;
                                Ok((permit, descriptor))
                            });
                        let permit = match held {
                            Ok(permit) => permit,
                            Err(answer) => {
                                // At a cap: told so and closed, a few at a time, briefly.
                                if let Ok(slot) = refusing.clone().try_acquire_owned() {
                                    connections.spawn(async move {
                                        let _slot = slot;
                                        refuse(stream, &answer).await;
                                    });
                                }
                                continue;
                            }
                        };
                        // Answers go out as soon as they are written, as `wasmtime serve`
                        // sends them: Nagle's algorithm would hold a small chunk back until
                        // the client's delayed ACK (tens of milliseconds).
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
                        }
                        let addresses = Addresses {
                            local: stream.local_addr().ok(),
                            remote,
                        };
                        let handle = handle.clone();
                        let activity = Arc::new(Activity::default());
                        let tracked = activity.clone();
                        let service =
                            hyper::service::service_fn(move |request: Request<Incoming>| {
                                let busy = Busy::new(tracked.clone());
                                let request = request
                                    .map(|body| ReadDeadline::new(body, limits.body_read_timeout));
                                let answered = handle(request, addresses);
                                async move {
                                    let response = answered.await?;
                                    Ok::<_, E>(response.map(|body| Tracked::new(body, busy)))
                                }
                            });
                        let stop = stop.clone();
                        connections.spawn(async move {
                            let _permit = permit;
                            let connection = http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(limits.header_read_timeout)
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service);
                            tokio::pin!(connection);
                            close_when_idle(
                                connection,
                                &activity,
                                limits.idle_timeout,
                                CLOSE_GRACE,
                                stop.cancelled(),
                                |c| c.graceful_shutdown(),
                            )
                            .await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                }
                while connections.try_join_next().is_some() {}
            }
            drop(listener);
            while connections.join_next().await.is_some() {}
        });
    }
    while accepts.join_next().await.is_some() {}
}

/// Answers a connection past the cap with `busy` once its request has begun (or after
/// [`REFUSAL_WAIT`]), then closes it.
async fn refuse(mut stream: tokio::net::TcpStream, busy: &[u8]) {
    use tokio::io::AsyncWriteExt;
    if tokio::time::timeout(REFUSAL_WAIT, stream.readable())
        .await
        .is_ok()
    {
        let _ = stream.try_read(&mut [0u8; 4096]);
    }
    let _ = tokio::time::timeout(REFUSAL_WAIT, async {
        stream.write_all(busy).await?;
        stream.shutdown().await
    })
    .await;
}

/// What a connection past a cap is told (`why`) before it is closed.
fn busy_answer(why: &str) -> Arc<[u8]> {
    let body = format!("{why}; try again\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

pin_project_lite::pin_project! {
    /// A request body whose read fails when it brings nothing for `timeout` (a client sending
    /// its body too slowly, or not at all, holds no instance for long).
    pub struct ReadDeadline<B> {
        #[pin]
        body: B,
        timeout: Duration,
        #[pin]
        stalled: Option<tokio::time::Sleep>,
    }
}

impl<B> ReadDeadline<B> {
    /// `body`, each read given `timeout` to bring something.
    pub fn new(body: B, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            stalled: None,
        }
    }
}

/// Why reading a request body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError<E> {
    /// The client's connection failed.
    #[error("reading the request body: {0}")]
    Client(#[source] E),
    /// Nothing came for this long.
    #[error("the client sent nothing of the request body for {0:?} (--http-body-read-timeout)")]
    Stalled(Duration),
}

impl<B: http_body::Body> http_body::Body for ReadDeadline<B> {
    type Data = B::Data;
    type Error = BodyReadError<B::Error>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            this.stalled.set(None);
            return Poll::Ready(frame.map(|f| f.map_err(BodyReadError::Client)));
        }
        if this.stalled.is_none() {
            this.stalled.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.stalled.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(BodyReadError::Stalled(*this.timeout)))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptors::{DescriptorBudget, DescriptorLimits};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server whose handler reads the whole request body and answers how much it read (or
    /// 408 with why it could not), within `limits`; its address.
    async fn server(limits: ServeLimits) -> (SocketAddr, CancellationToken) {
        let descriptors = DescriptorBudget::new(DescriptorLimits::default());
        server_holding(limits, descriptors.reserve().unwrap()).await
    }

    /// As [`server`], its connections charged to `descriptors`.
    async fn server_holding(
        limits: ServeLimits,
        descriptors: Arc<ContainerDescriptors>,
    ) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve_http(
            vec![listener],
            limits,
            descriptors,
            stop.clone(),
            |request, _| async move {
                let (status, text) = match request.into_body().collect().await {
                    Ok(body) => (200, format!("read {}", body.to_bytes().len())),
                    Err(e) => (408, e.to_string()),
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                        .unwrap(),
                )
            },
        ));
        (addr, stop)
    }

    fn limits() -> ServeLimits {
        ServeLimits {
            max_connections: 8,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
        }
    }

    /// Everything the server sends until it closes the connection, and how long that took;
    /// fails past `deadline`.
    async fn until_closed(
        stream: &mut tokio::net::TcpStream,
        deadline: Duration,
    ) -> (String, Duration) {
        let started = std::time::Instant::now();
        let mut read = Vec::new();
        tokio::time::timeout(deadline, stream.read_to_end(&mut read))
            .await
            .expect("the server closed the connection in time")
            .expect("read");
        (
            String::from_utf8_lossy(&read).into_owned(),
            started.elapsed(),
        )
    }

    #[tokio::test]
    async fn a_connection_past_the_cap_is_answered_503_and_closed() {
        let (addr, _stop) = server(ServeLimits {
            max_connections: 2,
            ..limits()
        })
        .await;
        let _held = [
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        ];
        // A client that sends its request is answered after it (an answer before the request
        // is one an HTTP client refuses), and so is one that sends nothing.
        let mut asking = tokio::net::TcpStream::connect(addr).await.unwrap();
        asking
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = until_closed(&mut asking, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("--http-max-connections-per-container"),
            "{answer}"
        );
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (answer, _) = until_closed(&mut silent, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        // A held connection closed frees its place.
        drop(_held);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
            next.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let (answer, _) = until_closed(&mut next, Duration::from_secs(5)).await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_that_finds_no_descriptor_is_answered_503_naming_the_budget() {
        let budget = DescriptorBudget::new(DescriptorLimits {
            total: Some(3),
            guaranteed_per_container: 1,
            ..DescriptorLimits::default()
        });
        let (addr, _stop) = server_holding(limits(), budget.reserve().unwrap()).await;
        // Another container holds its guarantee and the one descriptor no one reserved.
        let other = budget.reserve().unwrap();
        let _others = [other.try_take(1).unwrap(), other.try_take(1).unwrap()];
        // This one's guarantee is one connection.
        let held = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut asking = tokio::net::TcpStream::connect(addr).await.unwrap();
        asking
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = until_closed(&mut asking, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("--max-pod-descriptors"), "{answer}");
        drop(held);
    }

    #[tokio::test]
    async fn idle_and_slow_clients_are_disconnected() {
        let (addr, _stop) = server(ServeLimits {
            idle_timeout: Duration::from_millis(300),
            header_read_timeout: Duration::from_millis(300),
            ..limits()
        })
        .await;
        // Connected, silent.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, took) = until_closed(&mut silent, Duration::from_secs(5)).await;
        assert!(took >= Duration::from_millis(250), "{took:?}");
        // Headers begun, never finished (slowloris), though bytes keep coming.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let trickle = async {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if slow.write_all(b"x-a: b\r\n").await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
        let (_, took) = until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Kept alive after an answer, then idle.
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, took) = until_closed(&mut kept, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(took >= Duration::from_millis(250), "{took:?}");
    }

    #[tokio::test]
    async fn a_stalled_request_body_fails_its_read() {
        let (addr, _stop) = server(ServeLimits {
            body_read_timeout: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let mut answer = vec![0; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("answered in time")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("--http-body-read-timeout"), "{answer}");
    }
}
