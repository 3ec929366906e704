//! Spin's WAGI executor (`executor = { type = "wagi" }`): a WASI command run once per request as
//! a CGI script. Its argv comes from the trigger's template, its environment holds the CGI
//! variables and the request's headers (`HTTP_*`), its stdin is the request's body, and what it
//! writes to stdout is the response: CGI header lines (`Content-Type`, `Status`, `Location`, any
//! other), a blank line, the body.

use crate::routes::RouteMatch;

/// The most bytes of a request body a WAGI component is given on stdin, and of output it may
/// write (both are held in memory).
pub const MAX_BODY: usize = 8 << 20;

/// What the CGI variables are made from.
#[derive(Debug)]
pub struct CgiRequest<'a> {
    /// `GET`, `POST`...
    pub method: &'a str,
    /// The request's path.
    pub path: &'a str,
    /// The query, without `?` (empty when none).
    pub query: &'a str,
    /// `HTTP/1.1`...
    pub version: &'a str,
    /// The request's headers.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The body's length.
    pub content_length: usize,
    /// The client's address.
    pub client: std::net::SocketAddr,
    /// The URL asked for, as `spin-full-url` gives it.
    pub full_url: &'a str,
}

/// The argv of a run: the template with `${SCRIPT_NAME}` (the path) and `${ARGS}` (the query's
/// `&`-separated parts) replaced, split at spaces.
pub fn argv(template: &str, request: &CgiRequest<'_>) -> Vec<String> {
    template
        .replace("${SCRIPT_NAME}", request.path)
        .replace("${ARGS}", &request.query.replace('&', " "))
        .split(' ')
        .filter(|arg| !arg.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The environment of a run: the CGI variables, Spin's `X_*` ones and the request's headers
/// as `HTTP_<NAME>` (except `Authorization` and `Connection`).
pub fn environment(request: &CgiRequest<'_>, matched: &RouteMatch<'_>) -> Vec<(String, String)> {
    let host_header = request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map_or("localhost", |(_, value)| *value);
    let (host, port) = host_header.rsplit_once(':').unwrap_or((host_header, "80"));
    let content_type = request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map_or("", |(_, value)| *value);
    let path_info = percent_decode(&matched.path_info);
    let mut env: Vec<(String, String)> = [
        ("AUTH_TYPE", String::new()),
        ("CONTENT_LENGTH", request.content_length.to_string()),
        ("CONTENT_TYPE", content_type.to_owned()),
        ("GATEWAY_INTERFACE", "CGI/1.1".to_owned()),
        ("QUERY_STRING", request.query.to_owned()),
        ("REMOTE_ADDR", request.client.ip().to_string()),
        ("REMOTE_HOST", request.client.ip().to_string()),
        ("REMOTE_USER", String::new()),
        ("REQUEST_METHOD", request.method.to_owned()),
        ("SCRIPT_NAME", matched.route_prefix.to_owned()),
        ("PATH_INFO", path_info.clone()),
        ("PATH_TRANSLATED", path_info),
        ("X_RAW_PATH_INFO", matched.path_info.clone()),
        ("SERVER_NAME", host.to_owned()),
        ("SERVER_PORT", port.to_owned()),
        ("SERVER_PROTOCOL", request.version.to_owned()),
        ("SERVER_SOFTWARE", "WAGI/1".to_owned()),
        ("X_FULL_URL", request.full_url.to_owned()),
        ("X_MATCHED_ROUTE", matched.route.to_owned()),
        ("X_BASE_PATH", "/".to_owned()),
        ("X_RAW_COMPONENT_ROUTE", matched.route.to_owned()),
        ("X_COMPONENT_ROUTE", matched.route_prefix.to_owned()),
        ("X_CLIENT_ADDR", request.client.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    env.extend(matched.named.iter().map(|(name, value)| {
        (
            format!("X_PATH_MATCH_{}", name.to_ascii_uppercase()),
            value.clone(),
        )
    }));
    for (name, value) in &request.headers {
        let name = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        if name != "HTTP_AUTHORIZATION" && name != "HTTP_CONNECTION" {
            env.push((name, (*value).to_owned()));
        }
    }
    env
}

/// A response a WAGI run wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct CgiResponse {
    /// Its status: `Status`'s, 302 with a `Location` and no `Status`, else 200.
    pub status: u16,
    /// Its headers, `Status` left out.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

/// Why a run's output is not a response.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CgiError {
    /// Nothing on stdout.
    #[error(
        "the WAGI component wrote nothing to stdout; a WAGI component writes its response there (check the component's `executor` in spin.toml)"
    )]
    Empty,
    /// No `Content-Type`, `Status` or `Location` header.
    #[error(
        "the WAGI component's output has no Content-Type, Status or Location header before its blank line"
    )]
    Insufficient,
    /// A header line that is not `Name: value`, or a bad status.
    #[error("the WAGI component's output has a bad header line: {0:?}")]
    Header(String),
}

/// Parses what a WAGI run wrote to stdout.
pub fn response(stdout: &[u8]) -> Result<CgiResponse, CgiError> {
    if stdout.is_empty() {
        return Err(CgiError::Empty);
    }
    // Headers end at the first empty line (`\n\n`, carriage returns ignored).
    let mut head = Vec::new();
    let mut body_start = stdout.len();
    let mut last = 0u8;
    for (index, byte) in stdout.iter().enumerate() {
        if *byte == b'\r' {
            continue;
        }
        if *byte == b'\n' && last == b'\n' {
            body_start = index + 1;
            break;
        }
        head.push(*byte);
        last = *byte;
    }
    let head = String::from_utf8_lossy(&head);
    let mut status = None;
    let mut location = false;
    let mut content_type = false;
    let mut headers = Vec::new();
    for line in head.lines().filter(|line| !line.trim().is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| CgiError::Header(line.to_owned()))?;
        let (name, value) = (name.trim(), value.trim());
        match name.to_ascii_lowercase().as_str() {
            "status" => {
                let code = value.split(' ').next().unwrap_or(value);
                status = Some(
                    code.parse::<u16>()
                        .ok()
                        .filter(|c| (100..1000).contains(c))
                        .ok_or_else(|| CgiError::Header(line.to_owned()))?,
                );
                continue;
            }
            "location" => location = true,
            "content-type" => content_type = true,
            _ => {}
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    if status.is_none() && !location && !content_type {
        return Err(CgiError::Insufficient);
    }
    let status = status.unwrap_or(if location { 302 } else { 200 });
    Ok(CgiResponse {
        status,
        headers,
        body: stdout[body_start.min(stdout.len())..].to_vec(),
    })
}

/// `%XX` sequences decoded (as UTF-8, lossily); other bytes kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn request<'a>(headers: Vec<(&'a str, &'a str)>) -> CgiRequest<'a> {
        CgiRequest {
            method: "POST",
            path: "/cgi/a%20b",
            query: "x=1&y=2",
            version: "HTTP/1.1",
            headers,
            content_length: 5,
            client: "10.1.2.3:4567".parse().unwrap(),
            full_url: "http://example.com:8080/cgi/a%20b?x=1&y=2",
        }
    }

    fn matched() -> RouteMatch<'static> {
        RouteMatch {
            component: "cgi",
            route: "/cgi/...",
            route_prefix: "/cgi",
            path_info: "/a%20b".into(),
            named: BTreeMap::new(),
        }
    }

    #[test]
    fn argv_and_environment_as_spin_gives_them() {
        let req = request(vec![
            ("host", "example.com:8080"),
            ("content-type", "text/plain"),
            ("x-trace", "t1"),
            ("authorization", "secret"),
        ]);
        assert_eq!(
            argv("${SCRIPT_NAME} ${ARGS}", &req),
            ["/cgi/a%20b", "x=1", "y=2"]
        );
        let env: BTreeMap<String, String> = environment(&req, &matched()).into_iter().collect();
        for (name, value) in [
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", "x=1&y=2"),
            ("SCRIPT_NAME", "/cgi"),
            ("PATH_INFO", "/a b"),
            ("X_RAW_PATH_INFO", "/a%20b"),
            ("SERVER_NAME", "example.com"),
            ("SERVER_PORT", "8080"),
            ("CONTENT_LENGTH", "5"),
            ("CONTENT_TYPE", "text/plain"),
            ("REMOTE_ADDR", "10.1.2.3"),
            ("HTTP_X_TRACE", "t1"),
            ("X_MATCHED_ROUTE", "/cgi/..."),
        ] {
            assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
        }
        assert!(!env.contains_key("HTTP_AUTHORIZATION"));
    }

    #[test]
    fn output_becomes_a_response() {
        let ok = response(b"Content-Type: text/plain\r\nX-One: 1\r\n\r\nhello\n").unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body, b"hello\n");
        assert!(ok.headers.contains(&("X-One".into(), "1".into())));
        let status = response(b"Status: 418 I'm a teapot\n\n").unwrap();
        assert_eq!((status.status, status.body.as_slice()), (418, &b""[..]));
        let moved = response(b"Location: /elsewhere\n\n").unwrap();
        assert_eq!(moved.status, 302);
        assert_eq!(response(b""), Err(CgiError::Empty));
        assert_eq!(response(b"X-Only: 1\n\nbody"), Err(CgiError::Insufficient));
        assert!(matches!(
            response(b"not a header\n\n"),
            Err(CgiError::Header(_))
        ));
        assert!(matches!(
            response(b"Status: many\n\n"),
            Err(CgiError::Header(_))
        ));
    }
}
