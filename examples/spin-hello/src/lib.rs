//! Answers every request with what Spin gave this component: the route it matched, the path
//! after it, its `message` variable and, for `/file/<path>`, a file of its filesystem. Logs one
//! line per request to stdout.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(request: Request) -> anyhow::Result<impl IntoResponse> {
    let header = |name: &str| {
        request
            .header(name)
            .and_then(|value| value.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let route = header("spin-component-route");
    let path_info = header("spin-path-info");
    println!("spin-hello: {} {} (route {route})", request.method(), request.path());
    if let Some(file) = path_info.strip_prefix("/file/") {
        return Ok(match std::fs::read(format!("/{file}")) {
            Ok(bytes) => Response::new(200, bytes),
            Err(e) => Response::new(404, format!("no file /{file}: {e}\n")),
        });
    }
    let message = match spin_sdk::variables::get("message") {
        Ok(value) => value,
        Err(e) => format!("(no message: {e})"),
    };
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!(
            "message={message}\nroute={route}\npath_info={path_info}\nmatched={}\n",
            header("spin-matched-route")
        ))
        .build())
}
