//! The kubelet's plain-HTTP health endpoint (`--healthz-bind-address`:`--healthz-port`,
//! 127.0.0.1:10248 by default), which `kubeadm join` and `kubeadm init` wait on and systemd or
//! a monitor may poll: `GET /healthz` answers `ok` while the agent runs. As on the kubelet, a
//! port that cannot be bound is logged and tried again, and does not stop the node.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long one connection may take, from its accept to its close.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// How long to wait before binding again when the port is taken.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Serves `/healthz` on `addr` until `shutdown`.
pub async fn serve(addr: SocketAddr, shutdown: CancellationToken) {
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the health endpoint cannot listen (--healthz-port, --healthz-bind-address); trying again in {BIND_RETRY:?}");
                tokio::select! {
                    () = tokio::time::sleep(BIND_RETRY) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    tracing::info!(%addr, "health endpoint listening");
    let allowed = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = allowed.clone().acquire_owned() => permit.expect("never closed"),
            () = shutdown.cancelled() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a health check failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(|request| async move {
                    Ok::<_, std::convert::Infallible>(answer(&request))
                }),
            );
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

/// `ok` for `/healthz` (and its sub-checks, as the kubelet's `/healthz/ping`), 404 elsewhere.
fn answer<B>(request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let (status, body) = if path == "/healthz" || path.starts_with("/healthz/") {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::NOT_FOUND, "404 page not found\n")
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a static response is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_answers_ok_over_plain_http_and_a_taken_port_is_tried_again() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(addr, stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!server.is_finished(), "a taken port does not end it");
        drop(taken);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let answer = loop {
            if let Ok(answer) = get(addr, "/healthz").await {
                break answer;
            }
            assert!(tokio::time::Instant::now() < deadline, "never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        assert!(
            get(addr, "/pods")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 404")
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }
}
