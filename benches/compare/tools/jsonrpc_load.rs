//! `jsonrpc-load`: a pipelined JSON-RPC client speaking LSP framing. Each connection first creates
//! its sessions (`session.create` with explicit ids, so a proxy pins them), then all connections
//! start together and keep `--depth` session-routed requests in flight each (round-robin over
//! their sessions) for `--secs`. Prints `START` and `STOP` at the edges of the measured window
//! (the harness samples proxy CPU there) and a final `RESULT {json}`, which counts failed answers
//! by kind (`error_kinds`: the JSON-RPC error code, or `session-not-found`), so a soak can tell
//! the errors an upstream restart causes by design from the others.
//!
//! That closed loop measures the peak rate; its latencies suffer from coordinated omission. With
//! `--rate R` the same connections and sessions are driven open-loop instead: R requests per
//! second in total at fixed intended send times, latency counted from the intended time
//! (`jsonrpc_open_loop.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use sessiongate::wire::codec::{parse_frame, FrameCodec, FrameStatus};
use sessiongate::wire::message::{parse_envelope, MessageKind};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_util::codec::FramedRead;

use crate::{jsonrpc_open_loop, loopback, percentiles, say};

/// Ids at or above this are setup requests (`session.create`).
pub(crate) const SETUP_ID: u64 = 1 << 40;

#[derive(clap::Args)]
pub struct Args {
    /// Target(s), comma-separated; connection i goes to target i % n (direct mode uses one
    /// address per mock; through the proxy, one address).
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) addr: Vec<String>,
    /// Client connections.
    #[arg(long, default_value_t = 10)]
    pub(crate) conns: usize,
    /// Sessions each connection creates and then addresses round-robin.
    #[arg(long, default_value_t = 10)]
    pub(crate) sessions: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 32)]
    pub(crate) depth: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) secs: f64,
    /// Method of the measured requests: session-scoped ones carry `params.sessionId`.
    #[arg(long, default_value = "session.getMetadata")]
    pub(crate) method: String,
    /// Extra bytes of payload per request (a `pad` string in params), to vary frame size.
    #[arg(long, default_value_t = 0)]
    pub(crate) pad: usize,
    /// Prefix of the session ids, so runs against a long-lived fleet do not collide.
    #[arg(long, default_value = "bench")]
    pub(crate) run_id: String,
    /// Hard cap on measured requests across all connections.
    #[arg(long, default_value_t = 50_000_000)]
    pub(crate) max_requests: u64,
    /// Give up if setup (connect + creating sessions) takes longer than this.
    #[arg(long, default_value_t = 120)]
    pub(crate) setup_timeout_secs: u64,
    /// Open loop: send this many requests per second in total (spread round-robin over the
    /// connections and their sessions) at fixed intended times for `--secs`, whatever the answers
    /// do, and measure each latency from its intended send time (coordinated-omission corrected).
    /// `--depth` does not apply then.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
}

#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) sent: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) notifications: AtomicU64,
    pub(crate) create_errors: AtomicU64,
    /// Failed answers (setup included) by [`error_kind`].
    error_kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Totals {
    pub(crate) fn count_error(&self, body: &[u8]) {
        *self
            .error_kinds
            .lock()
            .unwrap()
            .entry(error_kind(body))
            .or_default() += 1;
    }
}

/// What kind of failure an error answer is: `session-not-found` (the node no longer knows the
/// session, e.g. after it restarted), else the error's code.
fn error_kind(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = &v["error"];
    let message = error["message"].as_str().unwrap_or_default();
    if message.contains("Session not found") {
        return "session-not-found".to_string();
    }
    match error["code"].as_i64() {
        Some(code) => code.to_string(),
        None => "unparsed".to_string(),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let targets = args
        .addr
        .iter()
        .map(|a| loopback(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(args.conns > 0 && args.depth > 0 && args.sessions > 0);
    let args = Arc::new(args);
    let totals = Arc::new(Totals::default());
    if let Some(rate) = args.rate {
        return jsonrpc_open_loop::run(args.clone(), targets, rate, totals).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(args.conns + 1));
    let setup_started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.conns {
        let target = targets[i % targets.len()];
        let (args, totals, stop, barrier) =
            (args.clone(), totals.clone(), stop.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let result = connection(i, target, &args, &totals, &stop, &barrier).await;
            if result.is_err() {
                // Don't leave the others waiting at the barrier for a connection that died.
                stop.store(true, Ordering::Relaxed);
            }
            result
        }));
    }
    let waited =
        tokio::time::timeout(Duration::from_secs(args.setup_timeout_secs), barrier.wait()).await;
    anyhow::ensure!(waited.is_ok(), "setup did not finish in time");
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let started = Instant::now();
    say("START");
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    say("STOP");
    let answered_in_window = totals.answered.load(Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(sample)) => latencies.extend(sample),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let mut result = serde_json::json!({
        "conns": args.conns,
        "sessions": args.conns * args.sessions,
        "depth": args.depth,
        "method": args.method,
        "setup_secs": setup_secs,
        "secs": elapsed,
        "sent": totals.sent.load(Ordering::Relaxed),
        "answered": answered_in_window,
        "answered_total": totals.answered.load(Ordering::Relaxed),
        "errors": totals.errors.load(Ordering::Relaxed),
        "create_errors": totals.create_errors.load(Ordering::Relaxed),
        "error_kinds": *totals.error_kinds.lock().unwrap(),
        "notifications": totals.notifications.load(Ordering::Relaxed),
        "rate": answered_in_window as f64 / elapsed,
        "failures": failures,
    });
    let p = percentiles(&mut latencies);
    result
        .as_object_mut()
        .unwrap()
        .extend(p.as_object().unwrap().clone());
    say(format_args!("RESULT {result}"));
    Ok(())
}

fn session_id(args: &Args, conn: usize, s: usize) -> String {
    format!("{}-c{conn}-s{s}", args.run_id)
}

/// A connection whose sessions exist: the frame reader (holding whatever it read past the setup
/// answers), the write half, and one request template per session (everything up to the id).
pub(crate) struct ReadyConnection {
    pub(crate) frames: FramedRead<OwnedReadHalf, FrameCodec>,
    pub(crate) write: OwnedWriteHalf,
    pub(crate) templates: Vec<Vec<u8>>,
}

/// Connect, create this connection's sessions (pipelined) and wait for all their answers.
pub(crate) async fn setup(
    index: usize,
    target: SocketAddr,
    args: &Args,
    totals: &Totals,
) -> anyhow::Result<ReadyConnection> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::with_capacity(read, FrameCodec::default(), 64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    for s in 0..args.sessions {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"session.create","params":{{"sessionId":"{}"}}}}"#,
            SETUP_ID + s as u64,
            session_id(args, index, s)
        );
        frame(&mut out, body.as_bytes());
    }
    write.write_all(&out).await?;
    let mut created = 0;
    while created < args.sessions {
        let body = frames
            .next()
            .await
            .context("connection closed during setup")??;
        match classify(&body) {
            Some((id, failed)) if id >= SETUP_ID => {
                created += 1;
                if failed {
                    totals.create_errors.fetch_add(1, Ordering::Relaxed);
                    totals.count_error(&body);
                }
            }
            Some(_) => {}
            None => {
                totals.notifications.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let pad = "x".repeat(args.pad);
    let templates = (0..args.sessions)
        .map(|s| {
            let sid = session_id(args, index, s);
            let params = if args.method.starts_with("session.") {
                format!(r#"{{"sessionId":"{sid}","pad":"{pad}"}}"#)
            } else {
                format!(r#"{{"message":"{sid}","pad":"{pad}"}}"#)
            };
            format!(
                r#"{{"jsonrpc":"2.0","method":"{}","params":{params},"id":"#,
                args.method
            )
            .into_bytes()
        })
        .collect();
    Ok(ReadyConnection {
        frames,
        write,
        templates,
    })
}

/// Frame one request: a template (ending in `"id":`) followed by the id and the closing brace.
pub(crate) fn put_request(out: &mut BytesMut, template: &[u8], id: u64) {
    let id = id.to_string();
    let len = template.len() + id.len() + 1;
    out.put_slice(b"Content-Length: ");
    out.put_slice(len.to_string().as_bytes());
    out.put_slice(b"\r\n\r\n");
    out.put_slice(template);
    out.put_slice(id.as_bytes());
    out.put_slice(b"}");
}

/// One client connection in the closed loop: set up, wait for everyone, then keep `depth`
/// requests in flight. Returns the latencies (µs) of the requests answered inside the window.
async fn connection(
    index: usize,
    target: SocketAddr,
    args: &Args,
    totals: &Totals,
    stop: &AtomicBool,
    barrier: &Barrier,
) -> anyhow::Result<Vec<u32>> {
    let ReadyConnection {
        mut frames,
        mut write,
        templates,
    } = setup(index, target, args, totals).await?;
    let mut out = BytesMut::with_capacity(64 * 1024);
    barrier.wait().await;
    if stop.load(Ordering::Relaxed) {
        return Ok(Vec::new());
    }

    // Measured loop: ids are in-flight slots 0..depth; a slot is reused only once answered.
    let mut sent_at = vec![Instant::now(); args.depth];
    let mut next_session = 0usize;
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut in_flight = 0usize;
    let mut send = |slot: usize, out: &mut BytesMut, sent_at: &mut [Instant]| {
        put_request(out, &templates[next_session % templates.len()], slot as u64);
        next_session += 1;
        sent_at[slot] = Instant::now();
    };
    for slot in 0..args.depth {
        send(slot, &mut out, &mut sent_at);
    }
    in_flight += args.depth;
    totals.sent.fetch_add(args.depth as u64, Ordering::Relaxed);
    write.write_all(&out).await?;
    out.clear();
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.secs + 5.0);
    while in_flight > 0 {
        let body = match tokio::time::timeout_at(drain_deadline, frames.next()).await {
            Err(_) => break, // answers still missing long after the window: stop waiting
            Ok(None) => anyhow::bail!("connection closed by the server"),
            Ok(Some(body)) => body?,
        };
        let Some((id, failed)) = classify(&body) else {
            totals.notifications.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let slot = id as usize;
        if slot >= args.depth {
            continue;
        }
        in_flight -= 1;
        if failed {
            totals.errors.fetch_add(1, Ordering::Relaxed);
            totals.count_error(&body);
        }
        if stop.load(Ordering::Relaxed) {
            continue;
        }
        totals.answered.fetch_add(1, Ordering::Relaxed);
        latencies.push(sent_at[slot].elapsed().as_micros().min(u32::MAX as u128) as u32);
        if totals.sent.fetch_add(1, Ordering::Relaxed) < args.max_requests {
            send(slot, &mut out, &mut sent_at);
            in_flight += 1;
        }
        // Write what we have once no further whole frame is waiting in the read buffer.
        let more = matches!(
            parse_frame(frames.read_buffer(), usize::MAX),
            Ok(FrameStatus::Complete { .. })
        );
        if !out.is_empty() && (!more || out.len() >= 32 * 1024) {
            write.write_all(&out).await?;
            out.clear();
        }
    }
    if !out.is_empty() {
        write.write_all(&out).await?;
    }
    Ok(latencies)
}

pub(crate) fn frame(out: &mut BytesMut, body: &[u8]) {
    sessiongate::wire::codec::encode_frame(body, out);
}

/// `Some((id, is_error))` for a response with a numeric id; `None` for anything else.
pub(crate) fn classify(body: &[u8]) -> Option<(u64, bool)> {
    let env = parse_envelope(body).ok()?;
    if env.kind != MessageKind::Response {
        return None;
    }
    let id = env.id?.get().parse().ok()?;
    Some((id, env.has_error))
}
