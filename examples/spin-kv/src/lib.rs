//! Counts its requests in Spin's default key-value store: `/` through
//! `fermyon:spin/key-value`, `/wasi` through `wasi:keyvalue` (an atomic increment, then a batch
//! written and read back).

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::wit::wasi::keyvalue::{atomics, batch, store};

#[http_component]
fn handle(request: Request) -> anyhow::Result<impl IntoResponse> {
    if request.path() == "/wasi" {
        return wasi_keyvalue();
    }
    let store = Store::open_default()?;
    let count = store
        .get("count")?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    store.set("count", count.to_string().as_bytes())?;
    Ok(Response::new(200, format!("{count}\n")))
}

/// `hits` incremented atomically, and a batch of the count written and read back.
fn wasi_keyvalue() -> anyhow::Result<Response> {
    let failed = |e| anyhow::anyhow!("{e:?}");
    let bucket = store::open("default").map_err(failed)?;
    let hits = atomics::increment(&bucket, "hits", 1).map_err(failed)?;
    batch::set_many(&bucket, &[("last".to_owned(), hits.to_string().into_bytes())])
        .map_err(failed)?;
    let read = batch::get_many(&bucket, &["last".to_owned(), "never".to_owned()])
        .map_err(failed)?;
    let shown: Vec<String> = read
        .into_iter()
        .map(|(key, value)| match value {
            Some(value) => format!("{key}={}", String::from_utf8_lossy(&value)),
            None => format!("{key}=none"),
        })
        .collect();
    Ok(Response::new(200, format!("hits {hits} {}\n", shown.join(" "))))
}
