//! Reading CRI log files as `kubectl logs` expects: text only or with timestamps, the last N
//! lines, lines since a time, a byte limit, and following a file until its container stops.

use super::Progress;
use bytes::Bytes;
use futures::Stream;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use tokio::sync::watch;

/// The kubelet's log options.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Keep streaming until the container stops.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only lines at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

struct Entry<'a> {
    stamp: &'a str,
    complete: bool,
    text: &'a [u8],
}

fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let stamp = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let complete = parts.next()? == b"F";
    Some(Entry {
        stamp,
        complete,
        text: parts.next().unwrap_or_default(),
    })
}

fn render(
    entries: &[Entry<'_>],
    options: &LogOptions,
    out: &mut Vec<u8>,
    at_line_start: &mut bool,
) {
    for e in entries {
        if options.timestamps && *at_line_start {
            out.extend_from_slice(e.stamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(e.text);
        if e.complete {
            out.push(b'\n');
        }
        *at_line_start = e.complete;
    }
}

fn select<'a>(data: &'a [u8], options: &LogOptions, apply_tail: bool) -> Vec<Entry<'a>> {
    let mut entries: Vec<Entry<'a>> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse)
        .filter(|e| {
            options
                .since
                .is_none_or(|since| e.stamp.parse::<jiff::Timestamp>().is_ok_and(|t| t >= since))
        })
        .collect();
    if apply_tail && let Some(n) = options.tail_lines {
        let mut lines = 0;
        let mut start = entries.len();
        while start > 0 {
            if entries[start - 1].complete {
                if lines == n {
                    break;
                }
                lines += 1;
            }
            start -= 1;
        }
        entries.drain(..start);
    }
    entries
}

/// Streams a log file. `progress` is the writer's progress when the file is still being written.
pub fn read(
    path: PathBuf,
    options: LogOptions,
    progress: Option<watch::Receiver<Progress>>,
) -> impl Stream<Item = std::io::Result<Bytes>> {
    struct State {
        path: PathBuf,
        options: LogOptions,
        progress: Option<watch::Receiver<Progress>>,
        offset: u64,
        sent: usize,
        first: bool,
        at_line_start: bool,
        done: bool,
    }
    let state = State {
        path,
        options,
        progress,
        offset: 0,
        sent: 0,
        first: true,
        at_line_start: true,
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let chunk = match read_from(&s.path, s.offset) {
                Ok(chunk) => chunk,
                Err(e) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
            };
            let complete_len = chunk.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            let mut out = Vec::new();
            if complete_len > 0 {
                s.offset += complete_len as u64;
                let entries = select(&chunk[..complete_len], &s.options, s.first);
                render(&entries, &s.options, &mut out, &mut s.at_line_start);
            }
            s.first = false;
            if let Some(limit) = s.options.limit_bytes {
                let room = limit.saturating_sub(s.sent);
                if out.len() >= room {
                    out.truncate(room);
                    s.done = true;
                }
            }
            s.sent += out.len();
            let follow = s.options.follow && !s.done;
            if !follow {
                s.done = true;
            } else if out.is_empty() {
                let progress = s.progress.as_mut()?;
                let current = *progress.borrow_and_update();
                if current.closed && current.len <= s.offset {
                    return None;
                }
                if current.len <= s.offset && progress.changed().await.is_err() {
                    // The writer is gone: read what is left, then stop.
                    s.options.follow = false;
                }
                continue;
            }
            if out.is_empty() {
                return None;
            }
            return Some((Ok(Bytes::from(out)), s));
        }
    })
}

fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn sample() -> Vec<u8> {
        b"2026-01-01T00:00:01.000000000Z stdout F one\n\
          2026-01-01T00:00:02.000000000Z stderr P tw\n\
          2026-01-01T00:00:03.000000000Z stderr F o\n\
          2026-01-01T00:00:04.000000000Z stdout F three\n"
            .to_vec()
    }

    async fn collect(options: LogOptions) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, sample()).unwrap();
        let chunks: Vec<_> = read(path, options, None).collect().await;
        String::from_utf8(
            chunks
                .into_iter()
                .map(Result::unwrap)
                .flat_map(|b| b.to_vec())
                .collect(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn options_shape_the_output() {
        assert_eq!(collect(LogOptions::default()).await, "one\ntwo\nthree\n");
        assert_eq!(
            collect(LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            })
            .await,
            "two\nthree\n"
        );
        assert_eq!(
            collect(LogOptions {
                tail_lines: Some(0),
                ..Default::default()
            })
            .await,
            ""
        );
        assert_eq!(
            collect(LogOptions {
                limit_bytes: Some(6),
                ..Default::default()
            })
            .await,
            "one\ntw"
        );
        let since = "2026-01-01T00:00:04Z".parse().ok();
        assert_eq!(
            collect(LogOptions {
                since,
                ..Default::default()
            })
            .await,
            "three\n"
        );
        let stamped = collect(LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        })
        .await;
        assert_eq!(stamped, "2026-01-01T00:00:04.000000000Z three\n");
    }
}
