//! Per-container log files in the CRI format (`<time> <stream> <F|P> <text>`), the writers a
//! runtime sends guest output to, and readers with the kubelet's options (follow, tail,
//! timestamps, since, limit).
//!
//! Everything a guest can make the agent hold is bounded: a line longer than
//! [`MAX_LINE_BYTES`] is written as partial (`P`) records of that size, a file is rotated past
//! [`LogPolicy::max_size`] keeping [`LogPolicy::max_files`] files, as the kubelet's container log
//! manager does, and readers read in blocks (a tail is found from the end). A write that fails
//! (a full disk) drops the output and says so in the agent's log; the guest never sees it fail.

pub(crate) mod reader;

pub use reader::{LogOptions, read};

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio::sync::watch;

/// The longest line written as one record; longer ones are split into partial records, as
/// containerd's `max_container_log_line_size` (16 KiB) does.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// When container log files are rotated (`--container-log-max-size`,
/// `--container-log-max-files`, with the kubelet's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    /// A log file at least this large is rotated.
    pub max_size: u64,
    /// How many files of one container run are kept, the current one included (at least 2).
    pub max_files: usize,
}

impl Default for LogPolicy {
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

/// Where a file's writer is: bytes written so far, whether the container has finished, and how
/// often the file was rotated (a follower then goes on in the new file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Bytes in the current file.
    pub len: u64,
    /// No more output will come.
    pub closed: bool,
    /// How many times the file was rotated.
    pub rotations: u64,
}

/// One container run's log file. It is opened for appending at the first output and closed
/// when the run ends, so a quiet container holds no file descriptor (a node runs thousands).
/// In standalone mode there is no file: each line goes to the agent's stdout, once.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    /// `Some(pod/container)`: lines go to stdout under this label, not to the file.
    stdout_label: Option<String>,
    policy: LogPolicy,
    file: Mutex<Appending>,
    progress: watch::Sender<Progress>,
    /// Whether the last write failed (so a failing disk is reported once, not per line).
    failing: std::sync::atomic::AtomicBool,
}

/// The open file of a [`LogFile`] (none while quiet) and its length, counted as it is written
/// (no `fstat` per line).
#[derive(Debug)]
struct Appending {
    file: Option<std::fs::File>,
    len: u64,
}

impl LogFile {
    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let appending = &mut *guard;
        let file = match &mut appending.file {
            Some(file) => file,
            None => appending.file.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            ),
        };
        file.write_all(line)?;
        appending.len = appending.len.saturating_add(line.len() as u64);
        let len = appending.len;
        if len >= self.policy.max_size {
            *appending = Appending { file: None, len: 0 };
            rotate(&self.path, self.policy.max_files)?;
            self.progress.send_modify(|p| {
                p.len = 0;
                p.rotations += 1;
            });
        } else {
            self.progress.send_modify(|p| p.len = len);
        }
        Ok(())
    }

    /// Writes one record of `stream`: a CRI line in the file, or a labelled line on stdout.
    fn record(&self, stream: &str, complete: bool, text: &[u8]) {
        match &self.stdout_label {
            Some(label) => print_line(label, text),
            None => self.append_or_report(&line(stream, complete, text)),
        }
    }

    /// Appends a record; a failure drops it and is reported in the agent's log (once until
    /// writes succeed again), never to the guest.
    fn append_or_report(&self, line: &[u8]) {
        use std::sync::atomic::Ordering;
        match self.append(line) {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "writing a container's log failed; its output is dropped until writes succeed again"
                    );
                }
            }
        }
    }

    /// Marks the log complete (followers stop at its end) and closes the file.
    pub fn close(&self) {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).file = None;
        self.progress.send_modify(|p| p.closed = true);
    }

    /// Where the writer is now.
    pub fn progress_now(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Takes the progress of a writer in another process (a runtime worker writes the file),
    /// for the followers of this one.
    pub fn observe(&self, progress: Progress) {
        self.progress.send_if_modified(|p| {
            let changed = *p != progress;
            *p = progress;
            changed
        });
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
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

/// Writes `label: text` as one line on stdout (a record longer than [`MAX_LINE_BYTES`] shows
/// as several lines); stdout's lock keeps lines whole.
fn print_line(label: &str, text: &[u8]) {
    let mut out = Vec::with_capacity(label.len() + text.len() + 3);
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(text);
    out.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    // Nobody to tell when the terminal is gone.
    let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
}

/// Moves a full log file aside (`<path>.<time>`) and removes the oldest rotated files beyond
/// `max_files - 1`.
fn rotate(path: &Path, max_files: usize) -> std::io::Result<()> {
    let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S.%f");
    let rotated = PathBuf::from(format!("{}.{stamp}", path.display()));
    std::fs::rename(path, &rotated)?;
    let mut old = rotated_files(path)?;
    old.sort();
    let excess = old.len().saturating_sub(max_files.saturating_sub(1).max(1));
    for file in &old[..excess] {
        std::fs::remove_file(file)?;
    }
    Ok(())
}

/// The rotated files of the log at `path`, in no particular order.
fn rotated_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}.", name.to_string_lossy());
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect())
}

/// Removes the logs (and their rotated files) of a container's runs before `keep_from` in
/// `dir`, where run `n` logs to `<n>.log`: as the kubelet keeps only the current and the
/// previous container's logs, so a container in a crash loop does not fill the disk.
pub fn remove_runs_before(dir: &Path, keep_from: i64) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let run = name
            .to_string_lossy()
            .split('.')
            .next()
            .and_then(|n| n.parse::<i64>().ok());
        if run.is_some_and(|run| run < keep_from) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Open log files, so that readers can follow the ones still being written.
#[derive(Debug, Default)]
pub struct LogFiles {
    policy: LogPolicy,
    /// Container output goes to stdout rather than to files (standalone mode).
    to_stdout: bool,
    open: Mutex<HashMap<PathBuf, Weak<LogFile>>>,
}

impl LogFiles {
    /// Log files rotated by `policy`.
    pub fn new(policy: LogPolicy) -> Self {
        Self {
            policy,
            to_stdout: false,
            open: Mutex::default(),
        }
    }

    /// No files: each container's output goes to stdout, a line at a time, prefixed with
    /// its label (standalone mode, where nobody reads log files).
    pub fn stdout() -> Self {
        Self {
            to_stdout: true,
            ..Self::default()
        }
    }

    /// The log of a container run at `path`, shown as `label` (`pod/container`) when output
    /// goes to stdout.
    pub fn for_container(&self, path: &Path, label: &str) -> std::io::Result<Arc<LogFile>> {
        if !self.to_stdout {
            return self.create(path);
        }
        let (progress, _) = watch::channel(Progress::default());
        Ok(Arc::new(LogFile {
            path: path.to_path_buf(),
            stdout_label: Some(label.to_string()),
            policy: self.policy,
            file: Mutex::new(Appending { file: None, len: 0 }),
            progress,
            failing: Default::default(),
        }))
    }

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
        let (progress, _) = watch::channel(Progress {
            len,
            ..Default::default()
        });
        let log = Arc::new(LogFile {
            path: path.to_path_buf(),
            stdout_label: None,
            policy: self.policy,
            file: Mutex::new(Appending { file: None, len }),
            progress,
            failing: Default::default(),
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
    /// The file this writes to.
    pub fn file(&self) -> &Arc<LogFile> {
        &self.file
    }

    /// Another writer into the same file and stream, with a line buffer of its own: writers
    /// used at once (the instances of one container serving requests side by side) each
    /// append whole lines, which never interleave mid-line.
    pub fn another(&self) -> LogWriter {
        LogWriter {
            file: self.file.clone(),
            stream: self.stream,
            partial: Vec::new(),
        }
    }

    /// Writes the complete lines in `buf` as records and keeps the rest, at most
    /// [`MAX_LINE_BYTES`] of it: a longer line goes out as partial records. Never waits or
    /// fails (see the module's doc); the rest goes out when the writer is dropped.
    pub fn write_lines(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let room = MAX_LINE_BYTES - self.partial.len();
            match buf.iter().take(room).position(|b| *b == b'\n') {
                Some(pos) => {
                    self.partial.extend_from_slice(&buf[..pos]);
                    let text = std::mem::take(&mut self.partial);
                    self.file.record(self.stream, true, &text);
                    buf = &buf[pos + 1..];
                }
                None if buf.len() < room => {
                    self.partial.extend_from_slice(buf);
                    return;
                }
                None => {
                    self.partial.extend_from_slice(&buf[..room]);
                    self.flush_partial();
                    buf = &buf[room..];
                }
            }
        }
    }

    fn flush_partial(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.partial);
        self.file.record(self.stream, false, &text);
    }
}

impl AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().write_lines(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().flush_partial();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Output that ended without a newline still reaches the log.
        self.flush_partial();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, usize)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let tag = parts.nth(2).unwrap().to_string();
                (tag, parts.next().unwrap_or_default().len())
            })
            .collect()
    }

    #[test]
    fn long_lines_become_partial_records_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = LogFiles::default().create(&path).unwrap();
        let mut writer = log.writer("stdout");
        writer.write_lines(&vec![b'x'; 40 << 10]);
        writer.write_lines(b"\nshort\ntail");
        drop(writer);
        let written = records(&path);
        assert_eq!(
            written,
            [
                ("P".to_string(), MAX_LINE_BYTES),
                ("P".to_string(), MAX_LINE_BYTES),
                ("F".to_string(), (40 << 10) - 2 * MAX_LINE_BYTES),
                ("F".to_string(), 5),
                ("P".to_string(), 4),
            ]
        );
    }

    #[test]
    fn files_rotate_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let logs = LogFiles::new(LogPolicy {
            max_size: 1000,
            max_files: 3,
        });
        let log = logs.create(&path).unwrap();
        let mut progress = logs.progress(&path).unwrap();
        let mut writer = log.writer("stdout");
        for i in 0..100 {
            writer.write_lines(format!("line {i:04} {}\n", "y".repeat(50)).as_bytes());
        }
        let rotated = rotated_files(&path).unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(std::fs::metadata(&path).map_or(0, |m| m.len()) < 1000);
        assert!(progress.borrow_and_update().rotations > 2);
        let newest = rotated.iter().max().unwrap();
        let kept = std::fs::read_to_string(newest).unwrap()
            + &std::fs::read_to_string(&path).unwrap_or_default();
        assert!(kept.contains("line 0099"), "the newest output is kept");
        assert!(!kept.contains("line 0000"), "the oldest is gone");
        // Runs before the previous one are removed with their rotated files.
        std::fs::write(dir.path().join("1.log"), "x").unwrap();
        std::fs::write(dir.path().join("2.log"), "x").unwrap();
        remove_runs_before(dir.path(), 1).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["1.log", "2.log"]);
    }

    #[test]
    fn a_failing_write_never_fails_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = LogFiles::default().create(&path).unwrap();
        let mut writer = log.writer("stdout");
        // The log's directory goes away: writes fail, the guest's writes still succeed.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let written = Pin::new(&mut writer).poll_write(&mut cx, b"hello\n");
        assert!(matches!(written, Poll::Ready(Ok(6))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn records_are_bounded_and_give_back_what_was_written(
            chunks in proptest::collection::vec(
                proptest::collection::vec(proptest::prop_oneof![9 => b'a'..=b'z', 1 => proptest::strategy::Just(b'\n')], 0..40_000),
                0..4,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("0.log");
            let log = LogFiles::default().create(&path).unwrap();
            let mut writer = log.writer("stdout");
            for chunk in &chunks {
                writer.write_lines(chunk);
            }
            drop(writer);
            let written = std::fs::read(&path).unwrap_or_default();
            let mut rebuilt = Vec::new();
            for record in written.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
                let mut fields = record.splitn(4, |b| *b == b' ');
                let tag = fields.nth(2).unwrap();
                let text = fields.next().unwrap_or_default();
                proptest::prop_assert!(text.len() <= MAX_LINE_BYTES);
                rebuilt.extend_from_slice(text);
                if tag == b"F" {
                    rebuilt.push(b'\n');
                }
            }
            proptest::prop_assert_eq!(rebuilt, chunks.concat());
        }
    }
}
