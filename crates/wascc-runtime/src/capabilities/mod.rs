//! The capability providers an actor's host calls reach, and the check that the actor's claims
//! grant the capability it calls. Messages use the waSCC codec: MessagePack maps with camelCase
//! keys.

pub mod blobstore;
pub mod http_server;
pub mod keyvalue;
pub mod logging;

use kubelet::logs::LogWriter;
use kubelet::runtime::Warnings;
use std::collections::BTreeSet;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// The HTTP server capability: the pod's ports serve requests as `HandleRequest` calls.
pub const HTTP_SERVER: &str = "wascc:http_server";
/// The logging capability: `WriteLog` into the container's log.
pub const LOGGING: &str = "wascc:logging";
/// The key-value capability: an in-memory store per running actor.
pub const KEYVALUE: &str = "wascc:keyvalue";
/// The blob store capability: containers and blobs on one of the pod's volumes.
pub const BLOBSTORE: &str = "wascc:blobstore";

/// A call for the actor: an operation and its payload, and where its answer goes.
#[derive(Debug)]
pub struct Delivery {
    /// The waPC operation, e.g. `HandleRequest`.
    pub operation: String,
    /// The MessagePack payload.
    pub payload: Vec<u8>,
    /// Where the actor's response (or error) goes; `None` when nobody waits for it.
    pub reply: Option<oneshot::Sender<Result<Vec<u8>, String>>>,
}

/// What an actor's host calls reach: the capabilities its claims grant, their providers, and
/// the container's log.
pub struct Host {
    actor: String,
    granted: BTreeSet<String>,
    stdout: LogWriter,
    stderr: LogWriter,
    warnings: Warnings,
    keyvalue: keyvalue::KeyValueStore,
    blobstore: Option<blobstore::BlobStore>,
    deliveries: mpsc::Sender<Delivery>,
}

impl Host {
    /// The host of actor `actor` (its name, for messages), granted `granted` capabilities.
    pub fn new(
        actor: String,
        granted: BTreeSet<String>,
        (stdout, stderr): (LogWriter, LogWriter),
        warnings: Warnings,
        blobstore: Option<blobstore::BlobStore>,
        deliveries: mpsc::Sender<Delivery>,
    ) -> Self {
        Self {
            actor,
            granted,
            stdout,
            stderr,
            warnings,
            keyvalue: keyvalue::KeyValueStore::default(),
            blobstore,
            deliveries,
        }
    }

    /// A line on the container's stderr, from the host about the actor.
    pub async fn log_error(&mut self, text: &str) {
        write_line(&mut self.stderr, text).await;
    }

    /// `__console_log`: a line on the container's stdout.
    pub async fn console_log(&mut self, text: &str) {
        write_line(&mut self.stdout, text).await;
    }

    /// `__host_call`: `operation` of capability `namespace`, if the actor's claims grant it.
    pub async fn call(
        &mut self,
        binding: &str,
        namespace: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        if !self.granted.contains(namespace) {
            let granted: Vec<&str> = self.granted.iter().map(String::as_str).collect();
            let message = format!(
                "actor {} is not authorized to use capability {namespace} (operation {operation}, binding {binding}): its claims grant only [{}]; sign it with {namespace} among its capabilities",
                self.actor,
                granted.join(", ")
            );
            self.warnings.warn("CapabilityDenied", message.clone());
            write_line(&mut self.stderr, &message).await;
            return Err(message);
        }
        match namespace {
            LOGGING => {
                let line = logging::line(operation, &payload)?;
                write_line(&mut self.stdout, &line).await;
                Ok(Vec::new())
            }
            KEYVALUE => self.keyvalue.call(operation, &payload),
            BLOBSTORE => match &self.blobstore {
                Some(store) => store.call(operation, &payload, &self.deliveries).await,
                None => Err(format!(
                    "{BLOBSTORE} has no volume: set the container's env {} to the mountPath of one of its volumeMounts",
                    crate::config::BLOBSTORE_ROOT
                )),
            },
            HTTP_SERVER => Err(format!(
                "{HTTP_SERVER} calls the actor; the actor has nothing to call on it (operation {operation:?})"
            )),
            other => Err(format!(
                "this node has no provider for capability {other} (it provides {HTTP_SERVER}, {LOGGING}, {KEYVALUE} and {BLOBSTORE})"
            )),
        }
    }
}

async fn write_line(writer: &mut LogWriter, text: &str) {
    let mut line = text.trim_end_matches('\n').as_bytes().to_vec();
    line.push(b'\n');
    if let Err(e) = writer.write_all(&line).await {
        tracing::warn!(error = %e, "writing an actor's log failed");
    }
}

/// Decodes a codec message.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(payload)
        .map_err(|e| format!("the message is not what the waSCC codec defines: {e}"))
}

/// Encodes a codec message (a MessagePack map).
pub fn encode<T: serde::Serialize>(message: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(message).map_err(|e| format!("encoding a reply: {e}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// MessagePack-ish bytes: arbitrary, or a map of a few fields with arbitrary values
    /// (including length prefixes that promise far more than follows).
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let field = (
            prop::sample::select(vec![
                "key",
                "value",
                "expires",
                "start",
                "stop",
                "keys",
                "id",
                "container",
                "chunkSize",
                "sequenceNo",
                "totalBytes",
                "text",
                "level",
            ]),
            prop::collection::vec(any::<u8>(), 0..12),
        );
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(field, 0..5).prop_map(|fields| {
                let mut bytes = vec![0x80 | fields.len() as u8];
                for (name, value) in fields {
                    bytes.push(0xa0 | name.len() as u8);
                    bytes.extend_from_slice(name.as_bytes());
                    bytes.extend_from_slice(&value);
                }
                bytes
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever an actor passes across the waPC boundary, to any provider, the host
        /// answers (or refuses) without panicking, and the answer is bounded.
        #[test]
        fn host_calls_with_any_payload_are_answered_without_panics(
            calls in prop::collection::vec((any::<u8>(), any::<u8>(), payload()), 1..8)
        ) {
            let mut data = Vec::new();
            for (namespace, operation, payload) in calls {
                data.extend([namespace, operation, payload.len() as u8]);
                data.extend(payload);
            }
            crate::fuzzing::host_calls(&data);
        }
    }
}
