//! Serves a wasi-http component on the pod's ports: every request gets a fresh instance from
//! the pre-instantiated component, as `wasmtime serve` does. A request whose guest fails
//! (traps, or answers with an error) is answered 500 with a generic body; what happened goes to
//! the container's log (in full) and the pod's events (rate-limited); the container keeps
//! serving. An instance runs until its handler returns, which
//! is after it has written its answer's body (as under `wasmtime serve`), unless its client
//! goes away first, the container stops, or a deadline passes ([`RequestDeadlines`]: the
//! request's own, and a grace once its answer is complete). A container holds at most its share of the
//! runtime's instance pool at once ([`ContainerShare`]: its guaranteed requests, then what it
//! may borrow up to `--max-http-requests-per-container`): a request past it is answered 503 at
//! once, so one pod's slow clients cannot take the instances every pod shares.

use crate::guest::{ComponentState, GuestSetup};
use crate::shares::{ContainerShare, NoSlot};
use http_body_util::BodyExt;
use kubelet::runtime::{Exit, ServeLimits, StartError};
use std::sync::Arc;
use tokio::net::TcpListener;
use wasm_host::failures::{FAILED_BODY, FailureReport};
use wasm_host::ports::{BodyReadError, ReadDeadline};
use wasmtime::Engine;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// What answers a server's requests.
pub enum Handlers {
    /// One wasi-http component answers every request.
    Component(ProxyPre<ComponentState>),
    /// A Spin app: its routes choose the component, or the host answers.
    Spin(crate::spin::Serving),
}

/// One HTTP server for a container.
pub struct Server {
    engine: Engine,
    handlers: Handlers,
    setup: GuestSetup,
    /// What this container may hold of the instance pool.
    share: ContainerShare,
    /// How long a request's instance may run, and may run on once its answer is complete.
    deadlines: RequestDeadlines,
    /// The instances handling requests: each runs until its handler returns (after its answer's
    /// body is written), or is stopped when its client goes away first or the server ends.
    guests: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// What a request no guest answered is answered.
enum Refused {
    /// Answered by the host itself (a Spin app's health and info endpoints, no route).
    Host(u16, String),
    /// 503: the container has no place for another request.
    Busy(NoSlot),
    /// 503: the container holds all the descriptors it may (its instance's mounts found none).
    Full(String),
    /// 500: the guest failed; what happened went to the container's log and events.
    Failed,
}

impl Server {
    /// A server handling requests with `handlers`, as many at once as `share` has places for,
    /// each instance stopped at `deadlines`.
    pub fn new(
        engine: Engine,
        handlers: Handlers,
        setup: GuestSetup,
        share: ContainerShare,
        deadlines: RequestDeadlines,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            handlers,
            setup,
            share,
            deadlines,
            guests: Default::default(),
        })
    }

    /// Serves `listeners` until `stop` (the requests in flight are finished first, then the
    /// run ends) or the task is aborted (which ends everything at once).
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        limits: ServeLimits,
        stop: tokio_util::sync::CancellationToken,
    ) -> Exit {
        let descriptors = self.setup.descriptors().clone();
        wasm_host::ports::serve_http(
            listeners,
            limits,
            descriptors,
            stop,
            move |mut request, addresses| {
                let server = self.clone();
                // An HTTP/1.0 request may name no host; the guest sees the address it reached.
                if request.uri().authority().is_none()
                    && !request.headers().contains_key(http::header::HOST)
                    && let Some(value) = addresses.local.and_then(|a| a.to_string().parse().ok())
                {
                    request.headers_mut().insert(http::header::HOST, value);
                }
                async move { server.handle(request, addresses.remote).await }
            },
        )
        .await;
        Exit::stopped()
    }

    async fn handle(
        &self,
        request: hyper::Request<ReadDeadline<hyper::body::Incoming>>,
        client: std::net::SocketAddr,
    ) -> Result<hyper::Response<HyperOutgoingBody>, ErrorCode> {
        let (status, message) = match self.call(request, client).await {
            Ok(response) => return Ok(response),
            Err(Refused::Host(status, body)) => (status, body),
            Err(Refused::Busy(why)) => (503, why.to_string()),
            Err(Refused::Full(why)) => (503, format!("{why}\n")),
            Err(Refused::Failed) => (500, FAILED_BODY.to_string()),
        };
        let body = http_body_util::Full::new(bytes::Bytes::from(message))
            .map_err(|never| match never {})
            .boxed_unsync();
        Ok(hyper::Response::builder()
            .status(status)
            .body(body)
            .expect("a static response is valid"))
    }

    async fn call(
        &self,
        mut request: hyper::Request<ReadDeadline<hyper::body::Incoming>>,
        client: std::net::SocketAddr,
    ) -> Result<hyper::Response<HyperOutgoingBody>, Refused> {
        let (pre, guest) = match &self.handlers {
            Handlers::Component(pre) => (pre, None),
            Handlers::Spin(app) => {
                let full_url = full_url(&request);
                let (component, matched) = match app.dispatch(request.uri().path()) {
                    crate::spin::Dispatch::Host(status, body) => {
                        return Err(Refused::Host(status, body));
                    }
                    crate::spin::Dispatch::Component(component, matched) => (component, matched),
                };
                match &component.handler {
                    crate::spin::Handler::Wagi(command, argv) => {
                        let run = WagiRun {
                            command,
                            argv,
                            guest: &component.guest,
                            matched: &matched,
                            full_url: &full_url,
                            client,
                        };
                        return self.call_wagi(request, run).await;
                    }
                    crate::spin::Handler::Http(pre) => {
                        for (name, value) in matched.spin_headers(&full_url, client) {
                            if let (Ok(name), Ok(value)) = (
                                http::HeaderName::try_from(name),
                                http::HeaderValue::try_from(value),
                            ) {
                                request.headers_mut().insert(name, value);
                            }
                        }
                        (pre, Some(&component.guest))
                    }
                }
            }
        };
        // Held by the instance until it ends, streaming body included.
        let permit = self.share.try_take().map_err(Refused::Busy)?;
        let report = self.setup.failures();
        let store = match guest {
            None => self.setup.request_store(&self.engine),
            Some(guest) => self.setup.spin_request_store(&self.engine, guest),
        };
        let mut store = store.map_err(|e| setup_failed(&report, e))?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let mut http = store.data_mut().http();
        let handles = http
            .new_incoming_request(Scheme::Http, request.map(|body| body.map_err(body_error)))
            .and_then(|incoming| Ok((incoming, http.new_response_outparam(sender)?)));
        let (incoming, outparam) = handles.map_err(|e| {
            report.failed(&format!("handing the request to the guest failed: {e:#}"));
            Refused::Failed
        })?;
        let pre = pre.clone();
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        let (answered_tx, answered_rx) = tokio::sync::oneshot::channel();
        let deadlines = self.deadlines;
        let guest = {
            let report = report.clone();
            let mut guests = self.guests.lock().unwrap_or_else(|p| p.into_inner());
            while guests.try_join_next().is_some() {}
            // The instance runs inside its pod's network, as a command does.
            guests.spawn(kubelet::netns::InNetns::new(
                self.setup.netns(),
                async move {
                    let _permit = permit;
                    let handled = async {
                        let proxy = pre.instantiate_async(&mut store).await?;
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut store, incoming, outparam)
                            .await
                    };
                    let outcome = deadlines.enforce(handled, answered_rx).await;
                    let outcome = outcome.map(|()| 0);
                    let exit = crate::guest::exit(&mut store, &outcome);
                    if exit.code != 0 {
                        // The error that ended it, unless it was the guest's own exit.
                        let error = outcome
                            .as_ref()
                            .err()
                            .filter(|e| e.downcast_ref::<wasmtime_wasi::I32Exit>().is_none());
                        report.guest_failed(&exit, error);
                    }
                    let _ = exit_tx.send(exit.code);
                },
            ))
        };
        // A request given up before its answer stops its instance.
        let guest = GuestStopper {
            guest: Some(guest),
            answered: Some(answered_tx),
        };
        match receiver.await {
            Ok(Ok(response)) => Ok(response.map(|body| {
                use http_body_util::BodyExt;
                GuestBody { body, guest }.boxed_unsync()
            })),
            Ok(Err(code)) => {
                report.failed(&format!(
                    "the guest answered a request with an error: {code:?}"
                ));
                Err(Refused::Failed)
            }
            // The instance ended without answering: it reported a failure, or its handler
            // returned without setting a response.
            Err(_) => {
                if exit_rx.await == Ok(0) {
                    report.failed("the guest's handler returned without answering the request");
                }
                Err(Refused::Failed)
            }
        }
    }
}

/// One request to a Spin app's WAGI component.
struct WagiRun<'a> {
    command: &'a wasmtime_wasi::p2::bindings::CommandPre<ComponentState>,
    argv: &'a str,
    guest: &'a crate::guest::ComponentGuest,
    matched: &'a spin_runtime::routes::RouteMatch<'a>,
    full_url: &'a str,
    client: std::net::SocketAddr,
}

impl Server {
    /// Runs a WAGI component for `request`: its body (at most [`wagi::MAX_BODY`]) on stdin, the
    /// CGI variables in its environment, its stdout parsed as the response. It runs within the
    /// request deadlines, holds a place of the container's share, and its body and output
    /// count against the container's memory limit.
    async fn call_wagi(
        &self,
        request: hyper::Request<ReadDeadline<hyper::body::Incoming>>,
        run: WagiRun<'_>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, Refused> {
        use spin_runtime::wagi;
        let permit = self.share.try_take().map_err(Refused::Busy)?;
        let report = self.setup.failures();
        let (parts, body) = request.into_parts();
        let body = match http_body_util::Limited::new(body, wagi::MAX_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return Err(Refused::Host(
                    413,
                    format!(
                        "the request's body could not be read whole (a WAGI component takes at most {} bytes): {e}\n",
                        wagi::MAX_BODY
                    ),
                ));
            }
        };
        // The body and the most output the run may write are held in memory: charged to the
        // container, as its instances' memories are.
        let held = u64::try_from(body.len() + wagi::MAX_BODY).unwrap_or(u64::MAX);
        let Some(_held) = self.setup.hold_memory(held) else {
            return Err(Refused::Host(
                503,
                format!(
                    "the container's memory limit has no room for this request's body and output ({held} bytes) beside its other requests\n"
                ),
            ));
        };
        let version = format!("{:?}", parts.version);
        let cgi = wagi::CgiRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or_default(),
            version: &version,
            headers: parts
                .headers
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
                .collect(),
            content_length: body.len(),
            client: run.client,
            full_url: run.full_url,
        };
        let args = wagi::argv(run.argv, &cgi);
        let env = wagi::environment(&cgi, run.matched);
        let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(wagi::MAX_BODY);
        let mut store = self
            .setup
            .wagi_request_store(&self.engine, run.guest, &args, env, body, stdout.clone())
            .map_err(|e| setup_failed(&report, e))?;
        let command = run.command.clone();
        let deadlines = self.deadlines;
        let outcome = kubelet::netns::InNetns::new(self.setup.netns(), async move {
            let _permit = permit;
            let ran = async {
                let instance = command.instantiate_async(&mut store).await?;
                instance.wasi_cli_run().call_run(&mut store).await
            };
            // The answer is complete when the run ends: no return grace.
            let (_, never_answered) = tokio::sync::oneshot::channel();
            let outcome = deadlines
                .enforce(async { ran.await.map(|_| ()) }, never_answered)
                .await;
            let outcome = outcome.map(|()| 0);
            let exit = crate::guest::exit(&mut store, &outcome);
            (outcome, exit)
        })
        .await;
        let (outcome, exit) = outcome;
        if exit.code != 0 {
            let error = outcome
                .as_ref()
                .err()
                .filter(|e| e.downcast_ref::<wasmtime_wasi::I32Exit>().is_none());
            report.guest_failed(&exit, error);
            return Err(Refused::Failed);
        }
        match wagi::response(&stdout.contents()) {
            Ok(cgi) => {
                let mut response = hyper::Response::builder().status(cgi.status);
                for (name, value) in &cgi.headers {
                    response = response.header(name.as_str(), value.as_str());
                }
                let body = http_body_util::Full::new(bytes::Bytes::from(cgi.body))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                response.body(body).map_err(|e| {
                    report.failed(&format!(
                        "the WAGI component's response is not valid HTTP: {e}"
                    ));
                    Refused::Failed
                })
            }
            Err(e) => {
                report.failed(&e.to_string());
                Err(Refused::Failed)
            }
        }
    }
}

/// Stops a request's instance when dropped, unless it was let go.
struct GuestStopper {
    guest: Option<tokio::task::AbortHandle>,
    /// Tells the instance its answer is complete (its return grace begins).
    answered: Option<tokio::sync::oneshot::Sender<()>>,
}

impl GuestStopper {
    /// The instance may run on to its end (its answer is complete), within its return grace;
    /// the server still owns it.
    fn let_go(&mut self) {
        self.guest = None;
        if let Some(answered) = self.answered.take() {
            let _ = answered.send(());
        }
    }
}

impl Drop for GuestStopper {
    fn drop(&mut self) {
        if let Some(guest) = self.guest.take() {
            guest.abort();
        }
    }
}

/// How long a request's instance may run: at most `timeout` in all, and at most `return_grace`
/// once its answer is complete (a guest that answers and never returns would hold its pooled
/// instance, and its container's share of them, for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDeadlines {
    /// The whole request, instance start to handler return (`--http-request-timeout`).
    pub timeout: std::time::Duration,
    /// After the answer's body is complete (`--http-return-grace`).
    pub return_grace: std::time::Duration,
    /// The CPU time the instance may use (`--http-request-cpu-time`), counted at the
    /// engine's epoch ticks.
    pub cpu_time: std::time::Duration,
}

impl RequestDeadlines {
    /// Runs `handled` (the instance's handler) until it returns or a deadline passes; then it is
    /// stopped with an error saying which. `answered` resolves when the answer is complete.
    async fn enforce(
        self,
        handled: impl Future<Output = wasmtime::Result<()>>,
        answered: tokio::sync::oneshot::Receiver<()>,
    ) -> wasmtime::Result<()> {
        let grace_over = async {
            match answered.await {
                Ok(()) => tokio::time::sleep(self.return_grace).await,
                // Never answered: the request's own deadline, or its client, ends it.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            outcome = handled => outcome,
            () = tokio::time::sleep(self.timeout) => Err(wasmtime::format_err!(
                "the request's instance ran for {:?}, the most a request may (--http-request-timeout); it was stopped",
                self.timeout
            )),
            () = grace_over => Err(wasmtime::format_err!(
                "the guest answered but its handler did not return within {:?} (--http-return-grace); its instance was stopped",
                self.return_grace
            )),
        }
    }
}

/// An answer's body, written by its instance as it is sent: the instance runs while the body
/// is being sent and on to its end once the body is complete; a client that goes away before
/// that stops it.
struct GuestBody {
    body: HyperOutgoingBody,
    guest: GuestStopper,
}

impl hyper::body::Body for GuestBody {
    type Data = bytes::Bytes;
    type Error = <HyperOutgoingBody as hyper::body::Body>::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = frame {
            this.guest.let_go();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// What a request whose instance could not be set up is answered: 503 saying why when the
/// container is at a limit, else 500 with the failure in `report`.
fn setup_failed(report: &FailureReport, error: StartError) -> Refused {
    match error {
        StartError::Full(why) => Refused::Full(why),
        other => {
            report.failed(&format!(
                "setting up an instance for a request failed: {other}"
            ));
            Refused::Failed
        }
    }
}

/// The URL a request asked for, as Spin gives it to a component (`spin-full-url`).
fn full_url<B>(request: &hyper::Request<B>) -> String {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    format!("http://{host}{path}")
}

/// What the guest is told when reading its request's body failed.
fn body_error(error: BodyReadError<hyper::Error>) -> ErrorCode {
    match error {
        BodyReadError::Client(e) => ErrorCode::from(e),
        BodyReadError::Stalled(_) => ErrorCode::ConnectionReadTimeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DEADLINES: RequestDeadlines = RequestDeadlines {
        timeout: Duration::from_secs(600),
        return_grace: Duration::from_secs(30),
        cpu_time: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn an_instance_that_answered_and_lingers_is_stopped_after_its_grace() {
        let (answered, heard) = tokio::sync::oneshot::channel();
        answered.send(()).unwrap();
        let started = tokio::time::Instant::now();
        let error = DEADLINES
            .enforce(std::future::pending(), heard)
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(error.to_string().contains("--http-return-grace"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_past_the_request_timeout_is_stopped() {
        let (answered, heard) = tokio::sync::oneshot::channel::<()>();
        let started = tokio::time::Instant::now();
        // Still answering (its body streams): only the request's own deadline applies.
        let outcome = DEADLINES.enforce(std::future::pending(), heard).await;
        drop(answered);
        assert_eq!(started.elapsed(), Duration::from_secs(600));
        let error = outcome.unwrap_err();
        assert!(
            error.to_string().contains("--http-request-timeout"),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_that_returns_keeps_its_outcome() {
        let (answered, heard) = tokio::sync::oneshot::channel();
        answered.send(()).unwrap();
        let handled = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        };
        assert!(DEADLINES.enforce(handled, heard).await.is_ok());
    }
}
