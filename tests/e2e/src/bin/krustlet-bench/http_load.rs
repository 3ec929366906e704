//! An HTTP load generator in the manner of wrk: a fixed number of keep-alive HTTP/1.1
//! connections, each sending the next request as soon as the last answer is read, for a fixed
//! time; and `wasmtime serve` started beside the agent for comparison, when it is on PATH.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What one load run saw.
pub struct Load {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests answered otherwise, or whose connection failed.
    pub errors: u64,
    /// How long the run took.
    pub elapsed: Duration,
    /// The latency of every answered request, sorted.
    pub latencies: Vec<Duration>,
}

impl Load {
    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Answers one connection saw.
#[derive(Default)]
struct Connection {
    ok: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

/// How long a connection may wait for one answer before it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `GET path` to `addr` over `connections` connections for `duration`.
pub async fn run(addr: SocketAddr, path: &str, connections: usize, duration: Duration) -> Load {
    let began = Instant::now();
    let until = began + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let path = path.to_string();
        tasks.spawn(async move { connection(addr, &path, until).await });
    }
    let mut load = Load {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let done = done.unwrap_or_else(|_| Connection {
            errors: 1,
            ..Default::default()
        });
        load.ok += done.ok;
        load.errors += done.errors;
        load.latencies.extend(done.latencies);
    }
    load.elapsed = began.elapsed();
    load.latencies.sort();
    load
}

/// One connection's requests until `until`; a failed connection is counted and opened again.
async fn connection(addr: SocketAddr, path: &str, until: Instant) -> Connection {
    use http_body_util::BodyExt;
    let mut seen = Connection::default();
    while Instant::now() < until {
        let Ok(Ok(stream)) =
            tokio::time::timeout(ANSWER_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
        else {
            seen.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, driver)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            seen.errors += 1;
            continue;
        };
        let driver = tokio::spawn(driver);
        while Instant::now() < until {
            let request = http::Request::get(path)
                .header(http::header::HOST, addr.to_string())
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("a valid request");
            let sent = Instant::now();
            let exchange = async {
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                anyhow::Ok(status)
            };
            match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
                Ok(Ok(status)) if status == http::StatusCode::OK => {
                    seen.ok += 1;
                    seen.latencies.push(sent.elapsed());
                }
                Ok(Ok(_)) => seen.errors += 1,
                _ => {
                    seen.errors += 1;
                    break;
                }
            }
        }
        driver.abort();
    }
    seen
}

/// `wasmtime serve` of a component, killed when dropped.
pub struct WasmtimeServe {
    child: tokio::process::Child,
    /// Its version, as it prints it.
    pub version: String,
}

impl WasmtimeServe {
    /// Starts `wasmtime serve` on `addr` when a `wasmtime` is on PATH (`None` if not); the
    /// guest's output goes to `output`, as the agent writes it to the pod's log file.
    pub async fn start(
        component: &std::path::Path,
        addr: SocketAddr,
        output: std::fs::File,
    ) -> anyhow::Result<Option<Self>> {
        let Ok(version) = std::process::Command::new("wasmtime")
            .arg("--version")
            .output()
        else {
            return Ok(None);
        };
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let child = tokio::process::Command::new("wasmtime")
            .arg("serve")
            .arg("-Scli")
            .arg("--addr")
            .arg(addr.to_string())
            .arg(component)
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true)
            .spawn()?;
        let serve = Self { child, version };
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "wasmtime serve did not listen on {addr} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Some(serve))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }
}
