//! Container logs as the runtime writes them (the CRI log format:
//! `<RFC 3339 time> <stdout|stderr> <P|F> <text>`, one file per container
//! attempt) turned into what `kubectl logs` shows: lines, optionally with
//! timestamps, filtered by `sinceTime`/`sinceSeconds`, cut to `tailLines` and
//! `limitBytes`, and followed while the container runs.

use std::{path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncSeekExt, BufReader},
    sync::mpsc,
};

/// What to show, from `kubectl logs` flags.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Keep streaming new lines while the container runs.
    pub follow: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<usize>,
    /// Only lines at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// One line of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Its time as written (RFC 3339 with nanoseconds).
    pub time: String,
    /// The text, without the trailing newline.
    pub text: String,
    /// Whether the line is complete (`F`) rather than a partial chunk (`P`).
    pub full: bool,
}

/// Parses one line of the CRI log format; `None` for anything else.
pub fn parse(raw: &str) -> Option<Line> {
    let mut parts = raw.splitn(4, ' ');
    let time = parts.next()?.to_owned();
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("").to_owned();
    Some(Line {
        time,
        text,
        full: !tag.starts_with('P'),
    })
}

fn render(line: &Line, options: &Options) -> String {
    let newline = if line.full { "\n" } else { "" };
    if options.timestamps {
        format!("{} {}{newline}", line.time, line.text)
    } else {
        format!("{}{newline}", line.text)
    }
}

fn wanted(line: &Line, options: &Options) -> bool {
    match (&options.since, line.time.parse::<jiff::Timestamp>()) {
        (Some(since), Ok(t)) => t >= *since,
        _ => true,
    }
}

/// Streams the log file at `path` into `out` as `options` say. While following,
/// `running` is asked (every poll) whether the container still runs; the stream
/// ends once it does not and the file has no more lines, or when `out` closes.
pub async fn stream<F, Fut>(path: PathBuf, options: Options, out: mpsc::Sender<Vec<u8>>, running: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return;
    };
    let mut reader = BufReader::new(file);
    let mut sent = 0usize;
    // The chunk, cut to what `limitBytes` still allows, counted in `sent`.
    let cut = |chunk: String, sent: &mut usize| {
        let mut bytes = chunk.into_bytes();
        if let Some(limit) = options.limit_bytes {
            bytes.truncate(limit.saturating_sub(*sent));
        }
        *sent += bytes.len();
        bytes
    };
    let limit_reached = |sent: usize| options.limit_bytes.is_some_and(|l| sent >= l);
    // What is there now: whole, or its last lines.
    let mut existing = Vec::new();
    let mut raw = String::new();
    loop {
        raw.clear();
        match reader.read_line(&mut raw).await {
            Ok(0) | Err(_) => break,
            Ok(_) if !raw.ends_with('\n') => {
                // A line still being written: read it again later.
                let back = i64::try_from(raw.len()).unwrap_or(0);
                let _ = reader.seek(std::io::SeekFrom::Current(-back)).await;
                break;
            }
            Ok(_) => {
                if let Some(line) = parse(raw.trim_end_matches('\n'))
                    && wanted(&line, &options)
                {
                    existing.push(line);
                }
            }
        }
    }
    let skip = options
        .tail_lines
        .map_or(0, |n| existing.len().saturating_sub(n));
    for line in &existing[skip..] {
        let bytes = cut(render(line, &options), &mut sent);
        if out.send(bytes).await.is_err() || limit_reached(sent) {
            return;
        }
    }
    if !options.follow {
        return;
    }
    loop {
        raw.clear();
        match reader.read_line(&mut raw).await {
            Ok(n) if n > 0 && raw.ends_with('\n') => {
                if let Some(line) = parse(raw.trim_end_matches('\n'))
                    && wanted(&line, &options)
                {
                    let bytes = cut(render(&line, &options), &mut sent);
                    if out.send(bytes).await.is_err() || limit_reached(sent) {
                        return;
                    }
                }
            }
            Ok(n) => {
                let back = i64::try_from(n).unwrap_or(0);
                if back > 0 {
                    let _ = reader.seek(std::io::SeekFrom::Current(-back)).await;
                }
                if out.is_closed() || !running().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2024-01-01T00:00:00.000000001Z stdout F one\n\
                       2024-01-01T00:00:01.000000000Z stderr F two\n\
                       2024-01-01T00:00:02.000000000Z stdout P thr\n\
                       2024-01-01T00:00:02.000000001Z stdout F ee\n";

    async fn collect(options: Options) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        stream(path, options, tx, || async { false }).await;
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend(chunk);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn lines_tails_times_and_limits() {
        assert_eq!(collect(Options::default()).await, "one\ntwo\nthree\n");
        assert_eq!(
            collect(Options {
                tail_lines: Some(1),
                ..Default::default()
            })
            .await,
            "ee\n"
        );
        let since = "2024-01-01T00:00:01Z".parse().ok();
        assert_eq!(
            collect(Options {
                since,
                ..Default::default()
            })
            .await,
            "two\nthree\n"
        );
        assert_eq!(
            collect(Options {
                timestamps: true,
                tail_lines: Some(3),
                ..Default::default()
            })
            .await,
            "2024-01-01T00:00:01.000000000Z two\n2024-01-01T00:00:02.000000000Z thr2024-01-01T00:00:02.000000001Z ee\n"
        );
        assert_eq!(
            collect(Options {
                limit_bytes: Some(5),
                ..Default::default()
            })
            .await,
            "one\nt"
        );
        assert_eq!(parse("garbage"), None);
    }

    #[tokio::test]
    async fn follow_streams_new_lines_until_the_container_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "2024-01-01T00:00:00Z stdout F first\n").unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r = running.clone();
        let task = tokio::spawn(stream(
            path.clone(),
            Options {
                follow: true,
                ..Default::default()
            },
            tx,
            move || {
                let r = r.clone();
                async move { r.load(std::sync::atomic::Ordering::SeqCst) }
            },
        ));
        assert_eq!(rx.recv().await.unwrap(), b"first\n");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"2024-01-01T00:00:01Z stdout F second\n")
            .unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"second\n");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        task.await.unwrap();
        assert!(
            rx.recv().await.is_none(),
            "the stream ends with the container"
        );
    }
}
