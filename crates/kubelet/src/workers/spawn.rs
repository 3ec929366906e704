//! Starting a runtime worker: the agent's own binary with the `worker` subcommand, in a process
//! group of its own (a signal to the agent's group does not reach it), its output in a log
//! file beside its socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;

/// How long a new worker may take to serve its socket.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// A worker's log file is moved aside (one previous file kept) when it is larger than this at
/// the worker's start.
const MAX_WORKER_LOG_BYTES: u64 = 10 << 20;

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The binary (the agent's own).
    pub program: PathBuf,
    /// The flags the agent was started with; the worker reads its settings from them.
    pub args: Vec<OsString>,
}

impl Launcher {
    /// The worker serving `socket` logs here.
    pub fn log_path(&self, socket: &Path) -> PathBuf {
        socket.with_extension("log")
    }

    /// Starts worker `index` serving `socket` and connects to it.
    pub async fn start(&self, index: usize, socket: &Path) -> std::io::Result<UnixStream> {
        let log_path = self.log_path(socket);
        if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > MAX_WORKER_LOG_BYTES) {
            let _ = std::fs::rename(&log_path, log_path.with_extension("log.1"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .arg("worker")
            .arg("--socket")
            .arg(socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn()?;
        let pid = child.id();
        tracing::info!(worker = index, ?pid, log = %log_path.display(), "started runtime worker");
        // Reaped here while the agent runs; after that, by init.
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                tracing::warn!(worker = index, ?pid, %status, "runtime worker exited");
            }
        });
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => return Ok(stream),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "runtime worker {index} did not serve {} within {START_DEADLINE:?} (see {}): {e}",
                            socket.display(),
                            log_path.display()
                        ),
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
