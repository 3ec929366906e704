//! Watches: replay from a resourceVersion, then live changes, filtered by namespace and selectors,
//! with bookmarks, timeouts and 410 Gone for versions older than the history window.

use super::handlers::{Ctx, present};
use super::response::{self, Reply};
use super::store::{Change, ChangeKind, Gone};
use axum::body::Body;
use futures::StreamExt;
use http::{Response, StatusCode, header};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Serves `?watch=true`.
pub fn serve(ctx: &Ctx) -> Reply {
    let def = ctx.target.def;
    let (labels, fields) = match ctx.selectors() {
        Ok(s) => s,
        Err(reply) => return reply.into(),
    };
    let requested: Option<u64> = match ctx.query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return response::bad_request(format!("invalid resource version: {rv}")).into();
            }
        },
    };
    let bookmarks = ctx
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let timeout = ctx
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let ns = ctx.target.namespace.clone();
    let name = ctx.target.name.clone();
    let matches = move |object: &Value| {
        let meta = &object["metadata"];
        (ns.is_empty() || meta["namespace"] == ns.as_str())
            && (name.is_empty() || meta["name"] == name.as_str())
            && labels.matches(object)
            && fields.matches(&present(def, object))
    };
    let store = &ctx.shared.store;
    // With no resourceVersion the watch starts with the current state as ADDED events.
    let (initial, subscription) = match requested {
        Some(rv) => (Vec::new(), store.subscribe(Some(rv))),
        None => {
            let (objects, rv) = store.read(|s| {
                (
                    s.list(def.storage, None).cloned().collect::<Vec<_>>(),
                    s.rv(),
                )
            });
            (objects, store.subscribe(Some(rv)))
        }
    };
    let subscription = match subscription {
        Ok(s) => s,
        Err(Gone { oldest }) => {
            let rv = requested.unwrap_or_default();
            let event = error_event(&format!("too old resource version: {rv} ({oldest})"));
            return stream_response(Body::from(format!("{event}\n")));
        }
    };
    let mut last_rv = store.read(|s| s.rv());
    let initial: Vec<String> = initial
        .iter()
        .filter(|o| matches(o))
        .map(|o| event_line("ADDED", &present(def, o)))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(256);
    let storage = def.storage;
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let mut live = subscription.live;
        let mut replay = subscription.replay.into_iter();
        let mut bookmark = tokio::time::interval(BOOKMARK_INTERVAL);
        bookmark.tick().await;
        loop {
            let change: Arc<Change> = if let Some(c) = replay.next() {
                c
            } else {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = bookmark.tick(), if bookmarks => {
                        let line = event_line("BOOKMARK", &json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}}));
                        if tx.send(line).await.is_err() { return; }
                        continue;
                    }
                    received = live.recv() => match received {
                        Ok(c) => c,
                        Err(RecvError::Lagged(_)) => {
                            let _ = tx.send(error_event("too old resource version: watch fell behind")).await;
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    },
                }
            };
            last_rv = change.rv;
            if change.storage != storage {
                continue;
            }
            let now = matches(&change.object);
            let before = change.old.as_ref().is_some_and(&matches);
            let kind = match change.kind {
                ChangeKind::Added if now => "ADDED",
                ChangeKind::Modified if now && before => "MODIFIED",
                ChangeKind::Modified if now => "ADDED",
                ChangeKind::Modified if before => "DELETED",
                ChangeKind::Deleted if before => "DELETED",
                _ => continue,
            };
            if tx
                .send(event_line(kind, &present(def, &change.object)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let body = tokio_stream_body(rx);
    stream_response(body)
}

fn tokio_stream_body(rx: tokio::sync::mpsc::Receiver<String>) -> Body {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (line, rx))
    })
    .map(|line| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)));
    Body::from_stream(stream)
}

fn stream_response(body: Body) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(body)
        .expect("static response parts are valid")
}

fn event_line(kind: &str, object: &Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

fn error_event(message: &str) -> String {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "Expired", "code": 410}})
    .to_string()
}
