//! The access log: one structured line per HTTP request and per JSON-RPC request a client
//! sent (`access_log:`). The data path only fills a [`Record`] (when the request is sampled)
//! and offers it to a bounded channel without waiting: a full channel drops the record and
//! counts it (`sessiongate_access_log_dropped_total`), so logging never slows traffic. One
//! writer task owns the output (stderr, or a file reopened on SIGUSR1 for log rotation), formats
//! records as text or JSON, and flushes whenever the channel runs empty.
//!
//! Nothing secret is logged: callers are named by user, never by token; an HTTP routing key
//! (which may be a cookie) is logged as its source and a short hash of its value unless
//! `log_keys: true`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogPath};

/// Records waiting for the writer; beyond, a record is dropped (and counted).
pub const QUEUE: usize = 8_192;

/// What a request was about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Session {
    #[default]
    None,
    /// A JSON-RPC session id.
    Id(Arc<str>),
    /// An HTTP routing key: where it came from (`header X-Session-Id`) and its value.
    Key { source: Arc<str>, value: String },
}

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Record {
    pub time: SystemTime,
    pub protocol: &'static str,
    pub listener: Arc<str>,
    pub pool: Arc<str>,
    /// The node that answered; `None` when the proxy answered itself.
    pub upstream: Option<Arc<str>>,
    pub session: Session,
    pub user: Option<Arc<str>>,
    /// HTTP method and path, or the JSON-RPC method (as the method table names it).
    pub method: Cow<'static, str>,
    /// HTTP status, or the JSON-RPC outcome (`ok`, `error`, `unavailable`, `timeout`,
    /// `refused`).
    pub outcome: Cow<'static, str>,
    /// Until the response head (HTTP) or the answer (JSON-RPC).
    pub latency: Duration,
    /// Request body bytes (HTTP: its `Content-Length`, when it has one) or frame bytes.
    pub bytes_in: Option<u64>,
    /// Response body bytes (HTTP: its `Content-Length`, when it has one) or frame bytes.
    pub bytes_out: Option<u64>,
}

/// The data path's handle on the access log; clones share the channel.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<Record>>,
    sample: f64,
    dropped: IntCounter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("on", &self.tx.is_some())
            .field("sample", &self.sample)
            .finish()
    }
}

impl AccessLog {
    /// No access log.
    pub fn off(dropped: IntCounter) -> AccessLog {
        AccessLog {
            tx: None,
            sample: 0.0,
            dropped,
        }
    }

    /// Start the writer for `config` (off: no writer). The writer ends when `stop` is cancelled
    /// and every handle is gone, after writing what it was sent. A file that cannot be opened is
    /// an error.
    pub fn start(
        config: &AccessLogConfig,
        dropped: IntCounter,
        stop: CancellationToken,
    ) -> std::io::Result<(AccessLog, Option<tokio::task::JoinHandle<()>>)> {
        if config.format == AccessLogFormat::Off {
            return Ok((AccessLog::off(dropped), None));
        }
        let output = Output::open(&config.path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            format: config.format,
            log_keys: config.log_keys,
            output,
        };
        let task = tokio::spawn(writer.run(rx, stop));
        let log = AccessLog {
            tx: Some(tx),
            sample: config.sample,
            dropped,
        };
        Ok((log, Some(task)))
    }

    /// Whether this request is to be logged: the log is on and the request is in the sample.
    /// Ask before building a [`Record`], so an unlogged request costs nothing more.
    pub fn sampled(&self) -> bool {
        self.tx.is_some() && (self.sample >= 1.0 || rand::random::<f64>() < self.sample)
    }

    /// Offer `record` to the writer without waiting; dropped (and counted) if it is behind.
    pub fn log(&self, record: Record) {
        if let Some(tx) = &self.tx {
            if tx.try_send(record).is_err() {
                self.dropped.inc();
            }
        }
    }
}

enum Output {
    Stderr(std::io::BufWriter<std::io::Stderr>),
    File {
        path: PathBuf,
        file: std::io::BufWriter<std::fs::File>,
    },
}

impl Output {
    fn open(path: &AccessLogPath) -> std::io::Result<Output> {
        Ok(match path {
            AccessLogPath::Stderr => Output::Stderr(std::io::BufWriter::new(std::io::stderr())),
            AccessLogPath::File(path) => Output::File {
                file: std::io::BufWriter::new(append(path)?),
                path: path.clone(),
            },
        })
    }

    fn writer(&mut self) -> &mut dyn std::io::Write {
        match self {
            Output::Stderr(w) => w,
            Output::File { file, .. } => file,
        }
    }

    /// Log rotation: the file was renamed away; write to a new one at the same path.
    fn reopen(&mut self) {
        if let Output::File { path, file } = self {
            let _ = file.flush();
            match append(path) {
                Ok(new) => *file = std::io::BufWriter::new(new),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "access log: reopen failed; still writing to the old file")
                }
            }
        }
    }
}

fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

struct Writer {
    format: AccessLogFormat,
    log_keys: bool,
    output: Output,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Record>, stop: CancellationToken) {
        let mut reopen = reopen_signal();
        let mut line = String::with_capacity(512);
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                }
                () = reopen_requested(&mut reopen) => {
                    self.output.reopen();
                    continue;
                }
                () = stop.cancelled() => {
                    // Write what was sent before the stop, then end.
                    rx.close();
                    while let Some(record) = rx.recv().await {
                        batch.push(record);
                    }
                    self.write(&mut batch, &mut line);
                    break;
                }
            }
            self.write(&mut batch, &mut line);
        }
        let _ = self.output.writer().flush();
    }

    fn write(&mut self, batch: &mut Vec<Record>, line: &mut String) {
        for record in batch.drain(..) {
            line.clear();
            match self.format {
                AccessLogFormat::Json => format_json(&record, self.log_keys, line),
                _ => format_text(&record, self.log_keys, line),
            }
            line.push('\n');
            if let Err(e) = self.output.writer().write_all(line.as_bytes()) {
                warn!(error = %e, "access log: write failed");
            }
        }
        let _ = self.output.writer().flush();
    }
}

#[cfg(unix)]
type ReopenSignal = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type ReopenSignal = Option<()>;

#[cfg(unix)]
fn reopen_signal() -> ReopenSignal {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::user_defined1()).ok()
}

#[cfg(not(unix))]
fn reopen_signal() -> ReopenSignal {
    None
}

/// Resolves at SIGUSR1; never, without a signal handler.
async fn reopen_requested(signal: &mut ReopenSignal) {
    #[cfg(unix)]
    if let Some(signal) = signal {
        if signal.recv().await.is_some() {
            return;
        }
    }
    #[cfg(not(unix))]
    let _ = signal;
    std::future::pending::<()>().await
}

/// `header X-Session-Id#1a2b3c4d`: the source and the first 8 hex digits of the value's
/// SHA-256 (enough to follow one session through a log, not to recover it), or the value as
/// sent under `log_keys`.
fn session_text(session: &Session, log_keys: bool) -> Option<String> {
    match session {
        Session::None => None,
        Session::Id(id) => Some(id.to_string()),
        Session::Key { source, value } if log_keys => Some(format!("{source}={value}")),
        Session::Key { source, value } => {
            let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
            let mut out = format!("{source}#");
            for b in &digest.as_ref()[..4] {
                let _ = write!(out, "{b:02x}");
            }
            Some(out)
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn format_json(r: &Record, log_keys: bool, out: &mut String) {
    let value = serde_json::json!({
        "time": rfc3339(r.time),
        "protocol": r.protocol,
        "listener": &*r.listener,
        "pool": &*r.pool,
        "upstream": r.upstream.as_deref(),
        "session": session_text(&r.session, log_keys),
        "user": r.user.as_deref(),
        "method": r.method,
        "outcome": r.outcome,
        "latency_ms": r.latency.as_secs_f64() * 1000.0,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
    });
    out.push_str(&value.to_string());
}

fn format_text(r: &Record, log_keys: bool, out: &mut String) {
    let session = session_text(&r.session, log_keys);
    let fields: [(&str, Option<&str>); 8] = [
        ("protocol", Some(r.protocol)),
        ("listener", Some(&r.listener)),
        ("pool", Some(&r.pool)),
        ("upstream", r.upstream.as_deref()),
        ("session", session.as_deref()),
        ("user", r.user.as_deref()),
        ("method", Some(&r.method)),
        ("outcome", Some(&r.outcome)),
    ];
    out.push_str(&rfc3339(r.time));
    for (key, value) in fields {
        let _ = write!(out, " {key}=");
        push_text_value(out, value.unwrap_or("-"));
    }
    let _ = write!(out, " latency_ms={:.3}", r.latency.as_secs_f64() * 1000.0);
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let _ = write!(
        out,
        " bytes_in={} bytes_out={}",
        count(r.bytes_in),
        count(r.bytes_out)
    );
}

/// A value as is when it is plain, else quoted with `"` and `\` escaped (and control
/// characters written as `\u{..}`), so one record is always one line.
fn push_text_value(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
    if plain {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(session: Session) -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            protocol: "http",
            listener: Arc::from("web"),
            pool: Arc::from("api"),
            upstream: Some(Arc::from("api-1")),
            session,
            user: Some(Arc::from("alice")),
            method: "GET /x y".into(),
            outcome: "200".into(),
            latency: Duration::from_micros(1_500),
            bytes_in: None,
            bytes_out: Some(42),
        }
    }

    #[test]
    fn text_lines_are_one_line_with_quoted_values() {
        let key = Session::Key {
            source: Arc::from("cookie sid"),
            value: "secret-cookie".to_owned(),
        };
        let mut line = String::new();
        format_text(&record(key), false, &mut line);
        assert_eq!(
            line,
            "2023-11-14T22:13:20.123Z protocol=http listener=web pool=api upstream=api-1 \
             session=\"cookie sid#ce3da500\" user=alice method=\"GET /x y\" outcome=200 \
             latency_ms=1.500 bytes_in=- bytes_out=42"
        );
        assert!(!line.contains("secret-cookie"));
        let mut line = String::new();
        let mut evil = record(Session::Id(Arc::from("a\nb\"c")));
        evil.user = None;
        format_text(&evil, false, &mut line);
        assert!(line.contains(r#"session="a\u{a}b\"c" user=- "#), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn json_lines_hash_keys_unless_asked_not_to() {
        let key = Session::Key {
            source: Arc::from("cookie sid"),
            value: "secret-cookie".to_owned(),
        };
        let mut line = String::new();
        format_json(&record(key.clone()), false, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["session"], "cookie sid#ce3da500");
        assert_eq!(v["bytes_in"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], 42);
        assert_eq!(v["latency_ms"], 1.5);
        assert!(!line.contains("secret-cookie"));
        let mut line = String::new();
        format_json(&record(key), true, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["session"], "cookie sid=secret-cookie");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dropped = IntCounter::new("d", "d").expect("counter");
        let (tx, _rx) = mpsc::channel(1);
        let log = AccessLog {
            tx: Some(tx),
            sample: 1.0,
            dropped: dropped.clone(),
        };
        log.log(record(Session::None));
        log.log(record(Session::None));
        log.log(record(Session::None));
        assert_eq!(dropped.get(), 2);
        assert!(!AccessLog::off(dropped).sampled());
    }
}
