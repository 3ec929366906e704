//! Entry points of the fuzz targets in `fuzz/` (compiled with `--cfg fuzzing`, and for the
//! property tests that feed them in the ordinary suite): what an actor's publisher and an
//! actor itself hand the node.

use crate::capabilities::{self, Host};
use kubelet::logs::LogFiles;
use kubelet::runtime::Warnings;
use tokio::sync::mpsc;

/// An actor module with or without claims: verified or refused, never a panic.
pub fn claims(bytes: &[u8]) {
    let _ = crate::claims::verify(bytes, 1000);
}

/// Host calls as an actor makes them across the waPC boundary: each call is a byte choosing the
/// capability, one choosing the operation, a length byte and that much payload. Every call is
/// answered or refused; an answer never exceeds what the key-value store may hold.
pub fn host_calls(mut data: &[u8]) {
    const NAMESPACES: [&str; 5] = [
        capabilities::KEYVALUE,
        capabilities::BLOBSTORE,
        capabilities::LOGGING,
        capabilities::HTTP_SERVER,
        "wascc:messaging",
    ];
    const OPERATIONS: [&str; 24] = [
        "Get",
        "Set",
        "Del",
        "Add",
        "KeyExists",
        "Push",
        "ListItemDelete",
        "Clear",
        "Range",
        "SetAdd",
        "SetRemove",
        "SetQuery",
        "SetUnion",
        "SetIntersection",
        "WriteLog",
        "CreateContainer",
        "RemoveContainer",
        "RemoveObject",
        "ListObjects",
        "GetObjectInfo",
        "StartUpload",
        "UploadChunk",
        "StartDownload",
        "HandleRequest",
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = LogFiles::default()
        .create(&dir.path().join("actor.log"))
        .expect("a log file");
    let blobs = dir.path().join("blobs");
    std::fs::create_dir(&blobs).expect("a blob directory");
    let (deliveries, _receiver) = mpsc::channel(8);
    let (warnings, _warned) = mpsc::channel(8);
    let granted = NAMESPACES[..4].iter().map(|n| n.to_string()).collect();
    let mut host = Host::new(
        "fuzzed".into(),
        granted,
        (log.writer("stdout"), log.writer("stderr")),
        Warnings::new("fuzzed", warnings),
        Some(capabilities::blobstore::BlobStore::new(blobs, false)),
        deliveries,
    );
    runtime.block_on(async {
        while let [namespace, operation, len, rest @ ..] = data {
            let len = usize::from(*len).min(rest.len());
            let (payload, next) = rest.split_at(len);
            data = next;
            let namespace = NAMESPACES[usize::from(*namespace) % NAMESPACES.len()];
            let operation = OPERATIONS[usize::from(*operation) % OPERATIONS.len()];
            if let Ok(answer) = host
                .call("default", namespace, operation, payload.to_vec())
                .await
            {
                assert!(answer.len() <= capabilities::keyvalue::MAX_STORE_BYTES + 1024);
            }
        }
    });
}
