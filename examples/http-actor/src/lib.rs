//! A waSCC actor that answers HTTP requests through `wascc:http_server`, by path:
//!
//! - `/` greets;
//! - `/count` adds one to the key-value counter `hits` (`wascc:keyvalue`) and answers it;
//! - `/kv/KEY` answers the value of KEY;
//! - `/log/TEXT` writes TEXT through `wascc:logging` and to the console;
//! - `/blob/put/CONTAINER/ID` stores the request body as a blob (`wascc:blobstore`);
//! - `/blob/list/CONTAINER` lists a container's blobs as `ID SIZE` lines;
//! - `/blob/get/CONTAINER/ID` starts a download whose chunks arrive as `ReceiveChunk` calls and
//!   collect in the key `download:ID`;
//! - `/trap` traps.
//!
//! A capability the host refuses answers 500 with the host's error.

use wascc_actor::prelude::*;

use codec::blobstore::{Blob, FileChunk};
use codec::http::{Request, Response};
use std::collections::HashMap;

/// Bytes per chunk of a download, small so that a short blob arrives in several.
const DOWNLOAD_CHUNK: u64 = 4;

actor_handlers! {
    codec::http::OP_HANDLE_REQUEST => handle_request,
    codec::blobstore::OP_RECEIVE_CHUNK => receive_chunk,
    codec::core::OP_HEALTH_REQUEST => health
}

fn handle_request(request: Request) -> HandlerResult<Response> {
    let path = request.path.trim_start_matches('/');
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        [""] => Ok(text(200, "hello from a waSCC actor")),
        ["count"] => {
            let hits = keyvalue::default().atomic_add("hits", 1)?;
            Ok(text(200, &hits.to_string()))
        }
        ["kv", key] => {
            let value = keyvalue::default().get(key)?;
            Ok(match value {
                Some(value) => text(200, &value),
                None => text(404, &format!("no key {key}")),
            })
        }
        ["log", message] => {
            logger::default().info(message)?;
            println(&format!("console: {message}"));
            Ok(text(200, "logged"))
        }
        ["blob", "put", container, id] => {
            let store = objectstore::default();
            store.create_container(container)?;
            let size = request.body.len() as u64;
            let blob = Blob {
                id: id.to_string(),
                container: container.to_string(),
                byte_size: size,
            };
            let transfer = store.start_upload(&blob, size.max(1), size)?;
            store.upload_chunk(&transfer, 0, &request.body)?;
            Ok(text(200, &format!("stored {size} bytes")))
        }
        ["blob", "list", container] => {
            let list = objectstore::default().list_objects(container)?;
            let lines: Vec<String> = list
                .blobs
                .iter()
                .map(|b| format!("{} {}", b.id, b.byte_size))
                .collect();
            Ok(text(200, &lines.join("\n")))
        }
        ["blob", "get", container, id] => {
            let store = objectstore::default();
            match store.get_blob_info(container, id)? {
                Some(blob) => {
                    store.start_download(&blob, DOWNLOAD_CHUNK, None)?;
                    Ok(text(202, "downloading"))
                }
                None => Ok(text(404, &format!("no blob {container}/{id}"))),
            }
        }
        ["trap"] => trap(),
        _ => Ok(text(404, &format!("no route {}", request.path))),
    }
}

fn receive_chunk(chunk: FileChunk) -> HandlerResult<()> {
    let store = keyvalue::default();
    let key = format!("download:{}", chunk.id);
    let so_far = store.get(&key)?.unwrap_or_default();
    let text = String::from_utf8_lossy(&chunk.chunk_bytes);
    store.set(&key, &format!("{so_far}{text}"), None)?;
    Ok(())
}

fn health(_request: codec::core::HealthRequest) -> HandlerResult<()> {
    Ok(())
}

fn trap() -> ! {
    std::process::abort()
}

fn text(status_code: u32, body: &str) -> Response {
    Response {
        status_code,
        status: String::new(),
        header: HashMap::from([("content-type".to_string(), "text/plain".to_string())]),
        body: body.as_bytes().to_vec(),
    }
}
