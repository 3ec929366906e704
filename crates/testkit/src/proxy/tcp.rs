//! A TCP proxy a test can cut and restore: connections reset, then refused. TLS passes through
//! untouched.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

/// A proxy to one upstream address; its port stays the same across cuts.
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: String,
    serving: Mutex<Option<AbortOnDropHandle<()>>>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 (an ephemeral port) and forwards every connection to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let proxy = Self {
            addr,
            upstream: upstream.to_string(),
            serving: Mutex::new(None),
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link: open connections are reset and new ones refused.
    pub fn cut(&self) {
        self.serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Restores the link on the same port.
    pub async fn restore(&self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("listening again on {}", self.addr))?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection ends with it.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(forward(client, upstream.clone()));
                while connections.try_join_next().is_some() {}
            }
        });
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(AbortOnDropHandle::new(task));
    }
}

async fn forward(mut client: TcpStream, upstream: String) {
    if let Ok(mut server) = TcpStream::connect(&upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
