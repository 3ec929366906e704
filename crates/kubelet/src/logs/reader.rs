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

fn select<'a>(data: &'a [u8], options: &LogOptions) -> Vec<Entry<'a>> {
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse)
        .filter(|e| {
            options
                .since
                .is_none_or(|since| e.stamp.parse::<jiff::Timestamp>().is_ok_and(|t| t >= since))
        })
        .collect()
}

/// How much of a log file is read at once.
const BLOCK: usize = 64 << 10;
/// The longest record a reader accepts; a longer run of bytes without a newline is skipped.
const MAX_RECORD: usize = 1 << 20;

/// Streams a log file. `progress` is the writer's progress when the file is still being written:
/// a follower waits for more, and goes on in the new file when the writer rotates it.
pub fn read(
    path: PathBuf,
    options: LogOptions,
    progress: Option<watch::Receiver<Progress>>,
) -> impl Stream<Item = std::io::Result<Bytes>> {
    struct State {
        path: PathBuf,
        options: LogOptions,
        progress: Option<watch::Receiver<Progress>>,
        file: Option<std::fs::File>,
        rotations: u64,
        /// Bytes read past the last complete record.
        pending: Vec<u8>,
        sent: usize,
        at_line_start: bool,
        done: bool,
    }
    let rotations = progress.as_ref().map_or(0, |p| p.borrow().rotations);
    let state = State {
        path,
        options,
        progress,
        file: None,
        rotations,
        pending: Vec::new(),
        sent: 0,
        at_line_start: true,
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            // Seen before reading, so that output written after this read wakes the follower.
            let seen = s.progress.as_mut().map(|p| *p.borrow_and_update());
            let chunk = match next_block(&mut s.file, &s.path, s.options.tail_lines) {
                Ok(chunk) => chunk,
                Err(e) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
            };
            let mut out = Vec::new();
            if !chunk.is_empty() {
                s.pending.extend_from_slice(&chunk);
                let complete = s
                    .pending
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p + 1);
                let entries = select(&s.pending[..complete], &s.options);
                render(&entries, &s.options, &mut out, &mut s.at_line_start);
                s.pending.drain(..complete);
                if s.pending.len() > MAX_RECORD {
                    s.pending.clear();
                }
            }
            if let Some(limit) = s.options.limit_bytes {
                let room = limit.saturating_sub(s.sent);
                if out.len() >= room {
                    out.truncate(room);
                    s.done = true;
                }
            }
            s.sent += out.len();
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), s));
            }
            if !chunk.is_empty() {
                continue;
            }
            // At the end of the file.
            let (Some(progress), Some(seen), true) = (s.progress.as_mut(), seen, s.options.follow)
            else {
                return None;
            };
            if seen.rotations != s.rotations {
                // What is left of the old file was read; go on in the new one.
                s.rotations = seen.rotations;
                s.file = None;
                s.pending.clear();
                continue;
            }
            if seen.closed {
                return None;
            }
            if progress.changed().await.is_err() {
                // The writer is gone: read what is left, then stop.
                s.options.follow = false;
            }
        }
    })
}

/// The next block of the file, opening it first (at its last `tail` lines when asked).
fn next_block(
    file: &mut Option<std::fs::File>,
    path: &std::path::Path,
    tail: Option<usize>,
) -> std::io::Result<Vec<u8>> {
    let file = match file {
        Some(file) => file,
        None => {
            let mut opened = match std::fs::File::open(path) {
                Ok(f) => f,
                // A rotation between the rename and the next write leaves no file for a moment.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            if let Some(n) = tail {
                let start = tail_start(&opened, n)?;
                opened.seek(SeekFrom::Start(start))?;
            }
            file.insert(opened)
        }
    };
    let mut block = vec![0; BLOCK];
    let n = file.read(&mut block)?;
    block.truncate(n);
    Ok(block)
}

/// Where the last `n` complete lines of a CRI log file begin, found by reading backwards from
/// its end a block at a time (a line is any number of `P` records and an `F` record).
pub(crate) fn tail_start(file: &std::fs::File, n: usize) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    // Only complete records count: the end is just past the last newline.
    let mut end = len;
    let mut pos = len;
    let mut head: Vec<u8> = Vec::new();
    let mut ends_found = false;
    let mut complete = 0usize;
    // The start of the record after the one being looked at.
    let mut next_start = len;
    while pos > 0 {
        let size = BLOCK.min(usize::try_from(pos).unwrap_or(BLOCK));
        pos -= size as u64;
        let mut data = vec![0; size];
        file.read_exact_at(&mut data, pos)?;
        data.extend_from_slice(&head);
        for i in (0..size).rev() {
            if data[i] != b'\n' {
                continue;
            }
            let start = pos + i as u64 + 1;
            if !ends_found {
                // The last newline: whatever follows it is a record still being written.
                ends_found = true;
                end = start;
                next_start = end;
                continue;
            }
            if n == 0 {
                return Ok(end);
            }
            if record_is_complete(&data[i + 1..]) {
                complete += 1;
                if complete == n + 1 {
                    return Ok(next_start);
                }
            }
            next_start = start;
        }
        head = data[..size.min(64)].to_vec();
    }
    if !ends_found {
        // Not one complete record: nothing to skip, nothing to show yet.
        return Ok(0);
    }
    if n == 0 {
        return Ok(end);
    }
    // The first record of the file.
    if record_is_complete(&head) {
        complete += 1;
        if complete == n + 1 {
            return Ok(next_start);
        }
    }
    Ok(0)
}

/// Whether the record starting at `bytes` ends a line (its tag is `F`).
fn record_is_complete(bytes: &[u8]) -> bool {
    let mut fields = bytes.splitn(4, |b| *b == b' ');
    fields.nth(2) == Some(b"F")
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

    fn record(second: u32, tag: &str, text: &str) -> String {
        format!("2026-01-01T00:00:{second:02}.000000000Z stdout {tag} {text}\n")
    }

    #[tokio::test]
    async fn a_tail_is_found_from_the_end_across_blocks_and_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut text = String::new();
        // Far more than a block of lines, then a line made of partial records.
        for i in 0..5000 {
            text += &record(1, "F", &format!("line {i}"));
        }
        text += &record(2, "P", "split ");
        text += &record(2, "P", "across ");
        text += &record(2, "F", "records");
        text += "2026-01-01T00:00:03.000000000Z stdout F being writ";
        std::fs::write(&path, &text).unwrap();
        let tail = |n| {
            let path = path.clone();
            async move {
                let options = LogOptions {
                    tail_lines: Some(n),
                    ..Default::default()
                };
                let chunks: Vec<_> = read(path, options, None).collect().await;
                chunks
                    .into_iter()
                    .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
                    .collect::<String>()
            }
        };
        assert_eq!(tail(1).await, "split across records\n");
        assert_eq!(tail(2).await, "line 4999\nsplit across records\n");
        let all = tail(100_000).await;
        assert!(all.starts_with("line 0\nline 1\n") && all.lines().count() == 5001);
        assert_eq!(tail(0).await, "");
        // Found by the cri_log fuzz target: a file with no complete record has no tail to
        // skip to (it used to answer its length, past the record still being written).
        std::fs::write(&path, b"\0\0\x04").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(tail_start(&file, 0).unwrap(), 0);
    }

    #[tokio::test]
    async fn a_follower_goes_on_in_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let logs = super::super::LogFiles::new(super::super::LogPolicy {
            max_size: 4096,
            max_files: 2,
        });
        let log = logs.create(&path).unwrap();
        let follower = read(
            path.clone(),
            LogOptions {
                follow: true,
                ..Default::default()
            },
            logs.progress(&path),
        );
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut out = log.writer("stdout");
            for i in 0..300 {
                out.write_all(format!("line {i:03} {}\n", "z".repeat(40)).as_bytes())
                    .await
                    .unwrap();
                if i % 20 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
            drop(out);
            log.close();
        });
        let read_all = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let chunks: Vec<_> = follower.collect().await;
            chunks
                .into_iter()
                .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
                .collect::<String>()
        })
        .await
        .expect("the follower ends when the log is closed");
        writer.await.unwrap();
        let lines: Vec<&str> = read_all.lines().collect();
        assert_eq!(
            lines.len(),
            300,
            "every line once, in order, across rotations"
        );
        assert!(
            lines
                .iter()
                .enumerate()
                .all(|(i, l)| l.starts_with(&format!("line {i:03}")))
        );
    }

    proptest::proptest! {
        #[test]
        fn the_tail_found_from_the_end_is_the_tail_counted_from_the_start(
            records in proptest::collection::vec((proptest::bool::ANY, "[a-z ]{0,40}"), 0..300),
            trailing in proptest::option::of("[a-z]{1,10}"),
            n in 0usize..12,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("0.log");
            let mut text = Vec::new();
            // Where each record ends, and whether it ends a line.
            let mut ends = Vec::new();
            for (complete, body) in &records {
                let tag = if *complete { "F" } else { "P" };
                text.extend_from_slice(format!("2026-01-01T00:00:00Z stdout {tag} {body}\n").as_bytes());
                ends.push((text.len() as u64, *complete));
            }
            if let Some(partial) = &trailing {
                text.extend_from_slice(format!("2026-01-01T00:00:00Z stdout F {partial}").as_bytes());
            }
            std::fs::write(&path, &text).unwrap();
            let lines: Vec<u64> = ends.iter().filter(|(_, c)| *c).map(|(end, _)| *end).collect();
            let last_end = ends.last().map_or(0, |(end, _)| *end);
            let expected = if n == 0 {
                last_end
            } else if lines.len() <= n {
                0
            } else {
                lines[lines.len() - n - 1]
            };
            let file = std::fs::File::open(&path).unwrap();
            proptest::prop_assert_eq!(tail_start(&file, n).unwrap(), expected);
        }
    }
}
