//! The TCP ports a guest serves on: wasm pods share the node's network, so a port another pod
//! holds is a clear start failure rather than a surprise.

use kubelet::runtime::StartError;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Binds every address; a port already taken fails the start with a message saying what to do.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            StartError(if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "port {} is already in use on {}: another pod (or process) on this node serves it; wasm pods share the node's network, so give this pod another containerPort or let it run on another node",
                    addr.port(),
                    addr.ip()
                )
            } else {
                format!("listening on {addr}: {e}")
            })
        })?;
        listeners.push(listener);
    }
    Ok(listeners)
}
