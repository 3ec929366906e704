//! The TCP ports a guest serves on, and the HTTP/1.1 server on them. A pod on the node's
//! network shares its ports with every other such pod, so a port another pod holds is a clear
//! start failure rather than a surprise; a pod in a network namespace of its own listens there.

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kubelet::netns::PodNetns;
use kubelet::runtime::{Network, StartError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
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

/// Serves HTTP/1.1 on every listener: `handle` answers each request, given the address the
/// client reached. When `stop` is cancelled the listeners close (the ports are free again),
/// open connections finish the request in flight and close, and this returns; aborting the
/// task ends everything at once.
pub async fn serve_http<F, Fut, B, E>(
    listeners: Vec<TcpListener>,
    stop: CancellationToken,
    handle: F,
) where
    F: Fn(Request<Incoming>, Option<SocketAddr>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let handle = Arc::new(handle);
    let mut accepts = JoinSet::new();
    for listener in listeners {
        let (handle, stop) = (handle.clone(), stop.clone());
        accepts.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.cancelled() => break,
                };
                match accepted {
                    Ok((stream, _)) => {
                        // Answers go out as soon as they are written, as `wasmtime serve`
                        // sends them: Nagle's algorithm would hold a small chunk back until
                        // the client's delayed ACK (tens of milliseconds).
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
                        }
                        let local = stream.local_addr().ok();
                        let handle = handle.clone();
                        let service =
                            hyper::service::service_fn(move |request| handle(request, local));
                        let stop = stop.clone();
                        connections.spawn(async move {
                            let connection = http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service);
                            tokio::pin!(connection);
                            let served = tokio::select! {
                                served = connection.as_mut() => served,
                                () = stop.cancelled() => {
                                    connection.as_mut().graceful_shutdown();
                                    connection.await
                                }
                            };
                            if let Err(e) = served {
                                tracing::debug!(error = %e, "HTTP connection ended with an error");
                            }
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
