//! `wascc:http_server`: the pod's ports serve HTTP/1.1, and every request becomes a
//! `HandleRequest` call of the actor with the waSCC codec's `Request`; its `Response` is the
//! answer.

use super::{Delivery, decode, encode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use kubelet::runtime::ServeLimits;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use wasm_host::descriptors::ContainerDescriptors;
use wasm_host::failures::{FAILED_BODY, FailureReport};
use wasm_host::ports::{BodyReadError, ReadDeadline};

/// The largest request body an actor is handed.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The codec's HTTP request.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActorRequest {
    method: String,
    path: String,
    query_string: String,
    header: HashMap<String, String>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

/// The codec's HTTP response.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActorResponse {
    status_code: u32,
    #[serde(default)]
    header: HashMap<String, String>,
    #[serde(with = "serde_bytes", default)]
    body: Vec<u8>,
}

/// Serves `listeners` (each connection charged to `descriptors`), handing requests to the actor through `deliveries`, until `stop` (then
/// the requests in flight are finished) or the task is aborted. A request the actor fails is
/// answered 500 with a generic body and reported to `failures`.
pub async fn serve(
    listeners: Vec<TcpListener>,
    limits: ServeLimits,
    descriptors: Arc<ContainerDescriptors>,
    deliveries: mpsc::Sender<Delivery>,
    failures: FailureReport,
    stop: tokio_util::sync::CancellationToken,
) {
    let failures = Arc::new(failures);
    wasm_host::ports::serve_http(
        listeners,
        limits,
        descriptors,
        stop,
        move |request, _addresses| {
            let (deliveries, failures) = (deliveries.clone(), failures.clone());
            async move { Ok::<_, Infallible>(handle(request, deliveries, &failures).await) }
        },
    )
    .await;
}

async fn handle(
    request: Request<ReadDeadline<Incoming>>,
    deliveries: mpsc::Sender<Delivery>,
    failures: &FailureReport,
) -> Response<Full<Bytes>> {
    match exchange(request, deliveries).await {
        Ok(response) => response,
        Err((StatusCode::INTERNAL_SERVER_ERROR, message)) => {
            failures.failed(&message);
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                FAILED_BODY.trim_end().into(),
            )
        }
        Err((status, message)) => plain(status, message),
    }
}

async fn exchange(
    request: Request<ReadDeadline<Incoming>>,
    deliveries: mpsc::Sender<Delivery>,
) -> Result<Response<Full<Bytes>>, (StatusCode, String)> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await.map_err(|e| {
        let status = match e.downcast_ref::<BodyReadError<hyper::Error>>() {
            Some(BodyReadError::Stalled(_)) => StatusCode::REQUEST_TIMEOUT,
            Some(BodyReadError::Client(_)) => StatusCode::BAD_REQUEST,
            None => StatusCode::PAYLOAD_TOO_LARGE,
        };
        (
            status,
            format!("reading the request body (at most {MAX_BODY} bytes): {e}"),
        )
    })?;
    let mut header: HashMap<String, String> = HashMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        header
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let actor_request = ActorRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query_string: parts.uri.query().unwrap_or_default().to_string(),
        header,
        body: body.to_bytes().to_vec(),
    };
    let payload = encode(&actor_request).map_err(internal)?;
    let (reply, answer) = oneshot::channel();
    deliveries
        .send(Delivery {
            operation: "HandleRequest".into(),
            payload,
            reply: Some(reply),
        })
        .await
        .map_err(|_| unavailable())?;
    let response = answer
        .await
        .map_err(|_| unavailable())?
        .map_err(|e| internal(format!("the actor failed to handle the request: {e}")))?;
    let response: ActorResponse = decode(&response).map_err(internal)?;
    let status = u16::try_from(response.status_code)
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| {
            internal(format!(
                "the actor answered with status code {}, which HTTP does not have",
                response.status_code
            ))
        })?;
    let mut builder = Response::builder().status(status);
    for (name, value) in &response.header {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .map_err(|e| internal(format!("the actor's response headers are invalid: {e}")))
}

fn internal(message: String) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, message)
}

fn unavailable() -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the actor stopped before it answered".into(),
    )
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message + "\n")));
    *response.status_mut() = status;
    response
}
