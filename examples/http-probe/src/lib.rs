//! A wasi-http component (`wasi:http/incoming-handler`) for tests. Paths:
//! `/` answers `hello from wasi-http`; `/fetch/HOST:PORT/PATH` makes an outgoing request to
//! `http://HOST:PORT/PATH` and answers with what came back (or the error, with status 502);
//! `/status/CODE` answers with that status; `/file/PATH` answers 200 when the file `/PATH`
//! exists in the guest's filesystem (its mounts) and 503 when not; `/sleep/MS` answers after
//! that many milliseconds; `/both...` answers as `/` and logs on stderr too; `/trap` traps;
//! `/linger` answers, then does not return for an hour; `/alloc/MIB` holds that many MiB for 3 s,
//! then answers; `/spin/MS` computes for that many milliseconds, then answers;
//! `/lookups/N/NAME` starts N lookups of `NAME-<i>` (wasi:sockets/ip-name-lookup) and never
//! polls them, answers how many were started, then holds them without returning; `/count`
//! reads the request's body and answers how many bytes it had; `/bytes/MIB` answers with that
//! many MiB, written 64 KiB at a time.
//! Every request is logged on stdout.

use std::io::{Read as _, Write as _};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasip2::http::proxy::export!(Probe);

struct Probe;

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        println!("http-probe: {:?} {path}", request.method());
        if path == "/count" {
            let counted = count_body(request);
            return respond(response_out, 200, &format!("read {counted} bytes\n"));
        }
        if let Some(mib) = path.strip_prefix("/bytes/").and_then(|m| m.parse::<usize>().ok()) {
            return stream_bytes(response_out, mib);
        }
        if let Some(rest) = path.strip_prefix("/lookups/") {
            hold_lookups(rest, response_out);
            return;
        }
        if path == "/linger" {
            // Answers, then never returns.
            respond(response_out, 200, "answered, lingering\n");
            std::thread::sleep(std::time::Duration::from_secs(3600));
            return;
        }
        let (status, body) = match path.as_str() {
            "/trap" => core::arch::wasm32::unreachable(),
            p if p.starts_with("/both") => {
                eprintln!("http-probe stderr: {p}");
                (200, "hello from wasi-http\n".to_string())
            }
            p if p.starts_with("/fetch/") => fetch(&p["/fetch/".len()..]),
            p if p.starts_with("/status/") => match p["/status/".len()..].parse() {
                Ok(code) => (code, format!("status {code}\n")),
                Err(_) => (400, "not a status code\n".to_string()),
            },
            p if p.starts_with("/sleep/") => match p["/sleep/".len()..].parse() {
                Ok(ms) => {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    (200, format!("slept {ms} ms\n"))
                }
                Err(_) => (400, "not a number of milliseconds\n".to_string()),
            },
            p if p.starts_with("/spin/") => match p["/spin/".len()..].parse() {
                Ok(ms) => {
                    let start = std::time::Instant::now();
                    let mut rounds = 0u64;
                    while start.elapsed() < std::time::Duration::from_millis(ms) {
                        rounds = std::hint::black_box(rounds.wrapping_add(1));
                    }
                    (200, format!("computed {ms} ms\n"))
                }
                Err(_) => (400, "not a number of milliseconds\n".to_string()),
            },
            p if p.starts_with("/alloc/") => match p["/alloc/".len()..].parse::<usize>() {
                Ok(mib) => {
                    // Holds that much memory (touched) for 3 s, then answers.
                    let held = vec![1u8; mib << 20];
                    std::thread::sleep(std::time::Duration::from_secs(3));
                    (200, format!("held {} MiB\n", held.iter().filter(|b| **b == 1).count() >> 20))
                }
                Err(_) => (400, "not a number of MiB\n".to_string()),
            },
            p if p.starts_with("/file/") => {
                let path = &p["/file".len()..];
                match std::fs::metadata(path) {
                    Ok(_) => (200, format!("{path} exists\n")),
                    Err(e) => (503, format!("{path}: {e}\n")),
                }
            }
            _ => (200, "hello from wasi-http\n".to_string()),
        };
        respond(response_out, status, &body);
    }
}

/// Starts `N` lookups for `N/NAME`, answers how many started, and holds them unpolled.
fn hold_lookups(request: &str, out: ResponseOutparam) {
    let Some((Ok(count), name)) = request
        .split_once('/')
        .map(|(count, name)| (count.parse::<usize>(), name))
    else {
        return respond(out, 400, "expected /lookups/N/NAME\n");
    };
    let network = wasip2::sockets::instance_network::instance_network();
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..count {
        match wasip2::sockets::ip_name_lookup::resolve_addresses(&network, &format!("{name}-{i}")) {
            Ok(lookup) => held.push(lookup),
            Err(e) => refused = Some(format!("{e:?}")),
        }
    }
    let answer = format!("started {} lookups (refused: {refused:?})\n", held.len());
    respond(out, 200, &answer);
    std::thread::sleep(std::time::Duration::from_secs(3600));
    drop(held);
}

/// Reads the request's body 64 KiB at a time, keeping none of it; how many bytes it had.
fn count_body(request: IncomingRequest) -> u64 {
    let body = request.consume().expect("the body is taken once");
    let stream = body.stream().expect("the stream is taken once");
    let mut counted = 0u64;
    // Ends with the body (a closed stream) or a failed read.
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        counted += chunk.len() as u64;
    }
    counted
}

/// Answers with `mib` MiB of `x`, written 64 KiB at a time.
fn stream_bytes(out: ResponseOutparam, mib: usize) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("the stream is taken once");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..mib * 16 {
        if stream.write_all(&chunk).is_err() {
            return;
        }
    }
    stream.flush().expect("flushing the body");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finishing the body");
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("the stream is taken once");
    stream.write_all(text.as_bytes()).expect("writing the body");
    stream.flush().expect("flushing the body");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finishing the body");
}

/// Fetches `http://TARGET` where TARGET is `host:port/path`.
fn fetch(target: &str) -> (u16, String) {
    let (authority, path) = target.split_once('/').unwrap_or((target, ""));
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).expect("http is valid");
    request.set_authority(Some(authority)).expect("a valid authority");
    request.set_path_with_query(Some(&format!("/{path}"))).expect("a valid path");
    let pending = match outgoing_handler::handle(request, None) {
        Ok(pending) => pending,
        Err(e) => return (502, format!("outgoing request refused: {e:?}\n")),
    };
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return (502, format!("outgoing request failed: {e:?}\n")),
        _ => return (502, "outgoing request vanished\n".to_string()),
    };
    let status = response.status();
    let body = response.consume().expect("the body is consumed once");
    let mut stream = body.stream().expect("the stream is taken once");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    (200, format!("fetched {status}: {text}"))
}
