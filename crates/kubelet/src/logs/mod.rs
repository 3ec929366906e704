//! Per-container log files in the CRI format (`<time> <stream> <F|P> <text>`), the writers a
//! runtime sends guest output to, and readers with the kubelet's options (follow, tail,
//! timestamps, since, limit).

mod reader;

pub use reader::{LogOptions, read};

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio::sync::watch;

/// Where a file's writer is: bytes written so far, and whether the container has finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes in the file.
    pub len: u64,
    /// No more output will come.
    pub closed: bool,
}

/// One container run's log file. It is opened for appending at the first output and closed
/// when the run ends, so a quiet container holds no file descriptor (a node runs thousands).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    progress: watch::Sender<Progress>,
}

impl LogFile {
    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let file = match &mut *file {
            Some(file) => file,
            None => file.insert(std::fs::OpenOptions::new().append(true).open(&self.path)?),
        };
        file.write_all(line)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or_default();
        self.progress.send_modify(|p| p.len = len);
        Ok(())
    }

    /// Marks the log complete (followers stop at its end) and closes the file.
    pub fn close(&self) {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.progress.send_modify(|p| p.closed = true);
    }

    /// A writer for one stream (`stdout` or `stderr`) into this file.
    pub fn writer(self: &Arc<Self>, stream: &'static str) -> LogWriter {
        LogWriter {
            file: self.clone(),
            stream,
            partial: Vec::new(),
        }
    }
}

/// Open log files, so that readers can follow the ones still being written.
#[derive(Debug, Default)]
pub struct LogFiles {
    open: Mutex<HashMap<PathBuf, Weak<LogFile>>>,
}

impl LogFiles {
    /// Creates (or appends to) the log file at `path`.
    pub fn create(&self, path: &Path) -> std::io::Result<Arc<LogFile>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let len = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .metadata()?
            .len();
        let (progress, _) = watch::channel(Progress { len, closed: false });
        let log = Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(None),
            progress,
        });
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, weak| weak.strong_count() > 0);
        open.insert(path.to_path_buf(), Arc::downgrade(&log));
        Ok(log)
    }

    /// The progress of a file still being written, if it is.
    pub fn progress(&self, path: &Path) -> Option<watch::Receiver<Progress>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(path)
            .and_then(Weak::upgrade)
            .map(|log| log.progress.subscribe())
    }
}

/// Formats one CRI log line.
fn line(stream: &str, complete: bool, text: &[u8]) -> Vec<u8> {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        .to_string();
    let tag = if complete { "F" } else { "P" };
    let mut out = Vec::with_capacity(text.len() + stamp.len() + 12);
    out.extend_from_slice(format!("{stamp} {stream} {tag} ").as_bytes());
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// A guest stream (stdout or stderr) written line by line into a container's log file.
#[derive(Debug)]
pub struct LogWriter {
    file: Arc<LogFile>,
    stream: &'static str,
    partial: Vec<u8>,
}

impl LogWriter {
    fn write_lines(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&buf[..pos]);
            let text = std::mem::take(&mut self.partial);
            self.file.append(&line(self.stream, true, &text))?;
            buf = &buf[pos + 1..];
        }
        self.partial.extend_from_slice(buf);
        Ok(())
    }

    fn flush_partial(&mut self) -> std::io::Result<()> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.partial);
        self.file.append(&line(self.stream, false, &text))
    }
}

impl AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        Poll::Ready(this.write_lines(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().flush_partial())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Best effort: output that ended without a newline still reaches the log.
        let _ = self.flush_partial();
    }
}
