//! `wascc:blobstore` on one of the pod's volumes: a blob container is a directory of the
//! volume, a blob a file in it. Downloads come back to the actor as `ReceiveChunk` calls.

use super::{Delivery, decode, encode};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Chunk size of a download that asks for none.
const DEFAULT_CHUNK: u64 = 64 * 1024;
/// The largest chunk a download is cut into, whatever the actor asks: a download is read from
/// the file a chunk at a time, so this is all of it the agent holds at once (per queued call).
const MAX_CHUNK: u64 = 1 << 20;

#[derive(Deserialize, Serialize)]
struct Container {
    id: String,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob {
    id: String,
    container: String,
    #[serde(default)]
    byte_size: u64,
}

#[derive(Serialize)]
struct BlobList {
    blobs: Vec<Blob>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct FileChunk {
    sequence_no: u64,
    container: String,
    id: String,
    total_bytes: u64,
    chunk_size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    context: Option<String>,
    #[serde(with = "serde_bytes", default)]
    chunk_bytes: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamRequest {
    id: String,
    container: String,
    #[serde(default)]
    chunk_size: u64,
    #[serde(default)]
    context: Option<String>,
}

/// Where an actor's blobs live: a directory on the node (a volume of the pod).
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    read_only: bool,
}

impl BlobStore {
    /// Blobs under `root`; `read_only` when the volume is mounted read-only.
    pub fn new(root: PathBuf, read_only: bool) -> Self {
        Self { root, read_only }
    }

    /// Handles `operation` with its MessagePack `payload`; downloads are sent to `deliveries`.
    pub async fn call(
        &self,
        operation: &str,
        payload: &[u8],
        deliveries: &mpsc::Sender<Delivery>,
    ) -> Result<Vec<u8>, String> {
        match operation {
            "CreateContainer" => {
                let container: Container = decode(payload)?;
                let dir = self.container(&container.id)?;
                self.writable()?;
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|e| io("creating container", &container.id, e))?;
                encode(&container)
            }
            "RemoveContainer" => {
                let container: Container = decode(payload)?;
                let dir = self.existing_container(&container.id)?;
                self.writable()?;
                tokio::fs::remove_dir_all(&dir)
                    .await
                    .map_err(|e| io("removing container", &container.id, e))?;
                encode(&container)
            }
            "RemoveObject" => {
                let blob: Blob = decode(payload)?;
                let path = self.blob(&blob.container, &blob.id)?;
                self.writable()?;
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(|e| io("removing blob", &blob.id, e))?;
                encode(&blob)
            }
            "ListObjects" => {
                let container: Container = decode(payload)?;
                let dir = self.existing_container(&container.id)?;
                let mut blobs = Vec::new();
                let mut entries = tokio::fs::read_dir(&dir)
                    .await
                    .map_err(|e| io("listing container", &container.id, e))?;
                while let Some(entry) = entries
                    .next_entry()
                    .await
                    .map_err(|e| io("listing container", &container.id, e))?
                {
                    let metadata = entry
                        .metadata()
                        .await
                        .map_err(|e| io("listing container", &container.id, e))?;
                    if metadata.is_file() {
                        blobs.push(Blob {
                            id: entry.file_name().to_string_lossy().into_owned(),
                            container: container.id.clone(),
                            byte_size: metadata.len(),
                        });
                    }
                }
                blobs.sort_by(|a, b| a.id.cmp(&b.id));
                encode(&BlobList { blobs })
            }
            "GetObjectInfo" => {
                let blob: Blob = decode(payload)?;
                let path = self.blob(&blob.container, &blob.id)?;
                let info = match tokio::fs::symlink_metadata(&path).await {
                    Ok(metadata) if metadata.is_file() => Blob {
                        byte_size: metadata.len(),
                        ..blob
                    },
                    // The codec's way to say "no such blob": an empty id.
                    _ => Blob {
                        id: String::new(),
                        container: blob.container,
                        byte_size: 0,
                    },
                };
                encode(&info)
            }
            "StartUpload" | "UploadChunk" => {
                let chunk: FileChunk = decode(payload)?;
                self.existing_container(&chunk.container)?;
                let path = self.blob(&chunk.container, &chunk.id)?;
                self.writable()?;
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(operation == "StartUpload")
                    .append(operation == "UploadChunk")
                    .open(&path)
                    .await
                    .map_err(|e| io("writing blob", &chunk.id, e))?;
                // Flushed before answering: the next call (or another container) reads it.
                async {
                    file.write_all(&chunk.chunk_bytes).await?;
                    file.flush().await
                }
                .await
                .map_err(|e| io("writing blob", &chunk.id, e))?;
                Ok(Vec::new())
            }
            "StartDownload" => {
                let request: StreamRequest = decode(payload)?;
                let path = self.blob(&request.container, &request.id)?;
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| io("reading blob", &request.id, e))?;
                let total_bytes = file
                    .metadata()
                    .await
                    .map_err(|e| io("reading blob", &request.id, e))?
                    .len();
                let deliveries = deliveries.clone();
                // The chunks reach the actor after this call returns: it handles one call at
                // a time.
                tokio::spawn(send_chunks(file, total_bytes, request, deliveries));
                Ok(Vec::new())
            }
            other => Err(format!(
                "wascc:blobstore has no operation {other:?} (it has CreateContainer, RemoveContainer, ListObjects, GetObjectInfo, RemoveObject, StartUpload, UploadChunk, StartDownload)"
            )),
        }
    }

    fn writable(&self) -> Result<(), String> {
        if self.read_only {
            return Err(format!(
                "the blob store's volume at {} is mounted readOnly; mount it read-write to change blobs",
                self.root.display()
            ));
        }
        Ok(())
    }

    fn container(&self, id: &str) -> Result<PathBuf, String> {
        Ok(self.root.join(component(id, "container")?))
    }

    fn existing_container(&self, id: &str) -> Result<PathBuf, String> {
        let dir = self.container(id)?;
        match std::fs::symlink_metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => Ok(dir),
            Ok(_) => Err(format!(
                "blob container {id:?} is not a directory of the volume"
            )),
            Err(_) => Err(format!("blob container {id:?} does not exist")),
        }
    }

    fn blob(&self, container: &str, id: &str) -> Result<PathBuf, String> {
        let path = self
            .existing_container(container)?
            .join(component(id, "blob")?);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "blob {id:?} is a symbolic link, which the blob store does not follow"
            ));
        }
        Ok(path)
    }
}

/// A container or blob id as one file name: no separators, no `.` or `..`.
fn component<'a>(id: &'a str, what: &str) -> Result<&'a Path, String> {
    let valid = !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\\', '\0']);
    if valid {
        Ok(Path::new(id))
    } else {
        Err(format!(
            "{what} id {id:?} is not a plain name (no '/', '..' or empty names): blobs stay inside the volume"
        ))
    }
}

fn io(doing: &str, id: &str, e: std::io::Error) -> String {
    format!("{doing} {id:?}: {e}")
}

/// Reads the blob a chunk at a time and delivers each as a `ReceiveChunk` call.
async fn send_chunks(
    mut file: tokio::fs::File,
    total_bytes: u64,
    request: StreamRequest,
    deliveries: mpsc::Sender<Delivery>,
) {
    use tokio::io::AsyncReadExt;
    let chunk_size = match request.chunk_size {
        0 => DEFAULT_CHUNK,
        asked => asked.min(MAX_CHUNK),
    };
    let mut sequence_no = 0;
    let mut sent = 0u64;
    while sent < total_bytes {
        let mut chunk_bytes = Vec::new();
        let want = chunk_size.min(total_bytes - sent);
        match (&mut file).take(want).read_to_end(&mut chunk_bytes).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sent += n as u64,
        }
        let chunk = FileChunk {
            sequence_no,
            container: request.container.clone(),
            id: request.id.clone(),
            total_bytes,
            chunk_size,
            context: request.context.clone(),
            chunk_bytes,
        };
        sequence_no += 1;
        let Ok(payload) = encode(&chunk) else { return };
        let delivery = Delivery {
            operation: "ReceiveChunk".into(),
            payload,
            reply: None,
        };
        if deliveries.send(delivery).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn call(
        store: &BlobStore,
        operation: &str,
        request: impl Serialize,
    ) -> Result<serde_json::Value, String> {
        let (sender, _receiver) = mpsc::channel(8);
        let response = store
            .call(
                operation,
                &rmp_serde::to_vec_named(&request).unwrap(),
                &sender,
            )
            .await?;
        Ok(if response.is_empty() {
            json!(null)
        } else {
            rmp_serde::from_slice(&response).unwrap()
        })
    }

    #[tokio::test]
    async fn blobs_are_files_in_container_directories() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path().to_path_buf(), false);
        call(&store, "CreateContainer", json!({"id": "photos"}))
            .await
            .unwrap();
        let chunk = |bytes: &[u8]| FileChunk {
            sequence_no: 0,
            container: "photos".into(),
            id: "a.txt".into(),
            total_bytes: 5,
            chunk_size: 5,
            context: None,
            chunk_bytes: bytes.to_vec(),
        };
        call(&store, "StartUpload", chunk(b"")).await.unwrap();
        call(&store, "UploadChunk", chunk(b"hello")).await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("photos/a.txt")).unwrap(),
            b"hello"
        );
        let list = call(&store, "ListObjects", json!({"id": "photos"}))
            .await
            .unwrap();
        assert_eq!(
            list,
            json!({"blobs": [{"id": "a.txt", "container": "photos", "byteSize": 5}]})
        );
        let missing = call(
            &store,
            "GetObjectInfo",
            json!({"id": "b", "container": "photos", "byteSize": 0}),
        )
        .await
        .unwrap();
        assert_eq!(missing["id"], json!(""));
    }

    #[tokio::test]
    async fn ids_cannot_leave_the_volume_and_read_only_volumes_refuse_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path().to_path_buf(), false);
        let escape = call(&store, "CreateContainer", json!({"id": ".."}))
            .await
            .unwrap_err();
        assert!(escape.contains("not a plain name"), "{escape}");
        let read_only = BlobStore::new(dir.path().to_path_buf(), true);
        let refused = call(&read_only, "CreateContainer", json!({"id": "x"}))
            .await
            .unwrap_err();
        assert!(refused.contains("readOnly"), "{refused}");
    }
}
