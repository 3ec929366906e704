//! Serves a wasi-http component on the pod's ports: every request gets a fresh instance from
//! the pre-instantiated component, as `wasmtime serve` does. A trapping request answers 500 and
//! is logged; the container keeps serving.

use crate::guest::{ComponentState, GuestSetup};
use kubelet::runtime::Exit;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;
use wasmtime::Engine;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// One HTTP server for a container.
pub struct Server {
    engine: Engine,
    pre: ProxyPre<ComponentState>,
    setup: GuestSetup,
}

impl Server {
    /// A server handling requests with `pre`.
    pub fn new(engine: Engine, pre: ProxyPre<ComponentState>, setup: GuestSetup) -> Arc<Self> {
        Arc::new(Self { engine, pre, setup })
    }

    /// Serves `listeners` until `stop` (the requests in flight are finished first, then the
    /// run ends) or the task is aborted (which ends everything at once).
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Exit {
        wasm_host::ports::serve_http(listeners, stop, move |mut request, local| {
            let server = self.clone();
            // An HTTP/1.0 request may name no host; the guest sees the address it reached.
            if request.uri().authority().is_none()
                && !request.headers().contains_key(http::header::HOST)
                && let Some(value) = local.and_then(|a| a.to_string().parse().ok())
            {
                request.headers_mut().insert(http::header::HOST, value);
            }
            async move { server.handle(request).await }
        })
        .await;
        Exit::stopped()
    }

    async fn handle(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, ErrorCode> {
        let response = self.call(request).await;
        match response {
            Ok(r) => Ok(r),
            Err(message) => {
                tracing::warn!("{message}");
                use http_body_util::BodyExt;
                let body = http_body_util::Full::new(bytes::Bytes::from(message))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                Ok(hyper::Response::builder()
                    .status(500)
                    .body(body)
                    .expect("a static response is valid"))
            }
        }
    }

    async fn call(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, String> {
        let mut store = self
            .setup
            .component_store(&self.engine)
            .map_err(|e| e.to_string())?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| format!("{e:#}"))?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| format!("{e:#}"))?;
        let pre = self.pre.clone();
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            let outcome = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            }
            .await;
            crate::guest::exit(&mut store, outcome.map(|()| 0))
        }));
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(format!("the guest answered with an error: {code:?}")),
            Err(_) => {
                let exit = task.await.unwrap_or_else(|e| kubelet::runtime::Exit {
                    code: 134,
                    reason: None,
                    message: Some(e.to_string()),
                });
                Err(format!(
                    "the guest failed before responding (exit code {}{}): {}",
                    exit.code,
                    exit.reason.map(|r| format!(", {r}")).unwrap_or_default(),
                    exit.message.unwrap_or_default()
                ))
            }
        }
    }
}
