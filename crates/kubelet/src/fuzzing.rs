//! Entry points of the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, as `cargo
//! fuzz` builds): each feeds untrusted bytes to a parser the node runs on a peer's input and
//! checks what must hold besides not panicking.

use std::io::Write;

/// A manifest or image index from a registry.
pub fn manifest(bytes: &[u8]) {
    let _ = crate::images::registry::parse_manifest(bytes);
}

/// A registry's `WWW-Authenticate` challenge.
pub fn www_authenticate(text: &str) {
    let challenge = crate::images::registry::Challenge::parse(text);
    let _ = (challenge.param("realm"), challenge.param("service"));
}

/// A filesystem layer of a wasi/wasm image: nothing found may pass the unpacking limit.
pub fn layer(gzip: bool, bytes: &[u8]) {
    const LIMIT: u64 = 1 << 20;
    let media_type = if gzip {
        oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE
    } else {
        oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE
    };
    let layers = std::iter::once((media_type.to_string(), bytes));
    let scratch = tempfile::tempdir().expect("a temporary directory");
    if let Ok(Some(file)) =
        crate::images::layers::find_file(layers, "/app.wasm", LIMIT, scratch.path())
    {
        let len = file.as_file().metadata().expect("the file's size").len();
        assert!(len <= LIMIT);
    }
}

/// A CRI log file read with a tail of `lines`: the tail starts inside the file.
pub fn cri_log(bytes: &[u8], lines: usize) {
    let mut file = tempfile::tempfile().expect("a temporary file");
    file.write_all(bytes).expect("writing a temporary file");
    let start = crate::logs::reader::tail_start(&file, lines).expect("reading a temporary file");
    assert!(start <= bytes.len() as u64);
    assert!(start == 0 || bytes[start as usize - 1] == b'\n');
}

/// A query string of `/containerLogs`, parsed and validated as the handler does.
pub fn log_query(query: &str) {
    let Ok(uri) = format!("/containerLogs/ns/pod/c?{query}").parse::<http::Uri>() else {
        return;
    };
    if let Ok(axum::extract::Query(q)) =
        axum::extract::Query::<crate::server::LogQuery>::try_from_uri(&uri)
        && q.validate().is_ok()
        && let Some(seconds) = q.since_seconds
    {
        let _ = crate::time::timestamp_plus(jiff::Timestamp::now(), seconds.saturating_neg());
    }
}
