//! The open-loop mode of `jsonrpc-load` (`--rate R`): after the usual setup (every connection
//! creates its sessions through the path under test), request k of the run is due at
//! `start + k / R`, on connection `k % conns`, for that connection's sessions in turn, with JSON-RPC
//! id k. One sender thread sleeps until the next request is due and writes everything due by then
//! (one write per connection), whether or not earlier answers came back; one reader thread per
//! connection times each answer from its request's intended send time, so a stall anywhere (the
//! proxy, the socket buffers, the sender itself) is charged to every request it delays: the
//! latencies are corrected for coordinated omission.
//!
//! Blocking threads rather than tokio tasks because tokio's timer has a 1 ms granularity: a request
//! due between two ticks would be sent up to 1 ms late and that lateness measured as latency. A
//! thread's `sleep` wakes within tens of microseconds; how late the sender was anyway is reported
//! (`send_lag_*`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use sessiongate::wire::codec::FrameCodec;
use tokio_util::codec::Decoder;

use crate::jsonrpc_load::{classify, put_request, setup, Args, ReadyConnection, Totals, SETUP_ID};
use crate::{percentiles, say};

/// How far after the setup the first request is due, so the threads are running by then.
const LEAD_IN: Duration = Duration::from_millis(20);
/// How long the readers wait for answers after the last request was sent.
const DRAIN: Duration = Duration::from_secs(5);

/// When each request is due: `start + k × period`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    period_ns: f64,
}

impl Schedule {
    fn due(&self, k: u64) -> Instant {
        self.start + Duration::from_nanos((k as f64 * self.period_ns) as u64)
    }
}

/// A connection handed over to blocking threads: two handles on one socket (the sender writes on
/// one, the reader reads on the other), the decoder and the bytes it already read, and the
/// connection's request templates.
struct BlockingConnection {
    writer: TcpStream,
    reader: TcpStream,
    codec: FrameCodec,
    read_buf: BytesMut,
    templates: Vec<Vec<u8>>,
    /// Requests written on this connection so far (the reader's finish line once sending ends).
    sent: AtomicU64,
}

impl BlockingConnection {
    fn from_ready(ready: ReadyConnection) -> anyhow::Result<Self> {
        let parts = ready.frames.into_parts();
        let stream = parts
            .io
            .reunite(ready.write)
            .context("reuniting the socket halves")?
            .into_std()?;
        // Both handles share the file status flags: blocking for both.
        stream.set_nonblocking(false)?;
        // Lets the reader look at the clock (drain deadline) while no answer comes.
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Self {
            reader: stream.try_clone()?,
            writer: stream,
            codec: parts.codec,
            read_buf: parts.read_buf,
            templates: ready.templates,
            sent: AtomicU64::new(0),
        })
    }
}

pub async fn run(
    args: Arc<Args>,
    targets: Vec<SocketAddr>,
    rate: f64,
    totals: Arc<Totals>,
) -> anyhow::Result<()> {
    anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be positive");
    let setup_started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.conns {
        let target = targets[i % targets.len()];
        let (args, totals) = (args.clone(), totals.clone());
        tasks.push(tokio::spawn(async move {
            setup(i, target, &args, &totals).await
        }));
    }
    let setup_all = async {
        let mut ready = Vec::new();
        for t in tasks {
            ready.push(BlockingConnection::from_ready(t.await??)?);
        }
        anyhow::Ok(ready)
    };
    let conns = tokio::time::timeout(Duration::from_secs(args.setup_timeout_secs), setup_all)
        .await
        .map_err(|_| anyhow::anyhow!("setup did not finish in time"))??;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let (a, t) = (args.clone(), totals.clone());
    let outcome = tokio::task::spawn_blocking(move || drive(&a, rate, &conns, &t)).await??;

    let mut latencies = outcome.latencies;
    let answered = latencies.len() as u64;
    let sent = totals.sent.load(Ordering::Relaxed);
    let mut result = serde_json::json!({
        "mode": "open-loop",
        "conns": args.conns,
        "sessions": args.conns * args.sessions,
        "method": args.method,
        "intended_rate": rate,
        "setup_secs": setup_secs,
        "secs": outcome.send_secs,
        "sent": sent,
        "answered": answered,
        "answered_total": answered,
        "unanswered": sent.saturating_sub(answered),
        "errors": totals.errors.load(Ordering::Relaxed),
        "create_errors": totals.create_errors.load(Ordering::Relaxed),
        "notifications": totals.notifications.load(Ordering::Relaxed),
        "rate": answered as f64 / outcome.send_secs,
        "failures": outcome.failures,
    });
    let extend = |result: &mut serde_json::Value, more: serde_json::Value| {
        result
            .as_object_mut()
            .expect("object")
            .extend(more.as_object().expect("object").clone());
    };
    extend(&mut result, percentiles(&mut latencies));
    let mut lag = outcome.send_lags;
    let lag = percentiles(&mut lag);
    extend(
        &mut result,
        serde_json::json!({
            "send_lag_p50_us": lag["p50_us"], "send_lag_p99_us": lag["p99_us"],
            "send_lag_max_us": lag["max_us"],
        }),
    );
    say(format_args!("RESULT {result}"));
    Ok(())
}

struct Outcome {
    /// Latency (µs) of every answered request, from its intended send time.
    latencies: Vec<u32>,
    /// Per write batch: how long after the batch's first request was due its writes finished.
    send_lags: Vec<u32>,
    /// Seconds from the first request's due time to the end of sending.
    send_secs: f64,
    failures: Vec<String>,
}

/// Send on this thread, read on one thread per connection; START when the first request is due,
/// STOP once every answer is in (or the drain time ran out), so the harness's CPU sample covers
/// every frame of the run.
fn drive(
    args: &Args,
    rate: f64,
    conns: &[BlockingConnection],
    totals: &Totals,
) -> anyhow::Result<Outcome> {
    let total = ((rate * args.secs).ceil() as u64).min(args.max_requests);
    let schedule = Schedule {
        start: Instant::now() + LEAD_IN,
        period_ns: 1e9 / rate,
    };
    let sending_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = conns
            .iter()
            .map(|conn| {
                let sending_done = &sending_done;
                scope.spawn(move || read_answers(conn, schedule, sending_done, totals))
            })
            .collect();
        std::thread::sleep(schedule.start.saturating_duration_since(Instant::now()));
        say("START");
        let sent = send_all(conns, &schedule, total, args.sessions, totals);
        let send_secs = schedule.start.elapsed().as_secs_f64();
        sending_done.store(true, Ordering::Release);
        let mut failures = Vec::new();
        let mut latencies = Vec::with_capacity(total as usize);
        for r in readers {
            match r.join() {
                Ok(Ok(sample)) => latencies.extend(sample),
                Ok(Err(e)) => failures.push(format!("{e:#}")),
                Err(_) => failures.push("reader thread panicked".into()),
            }
        }
        say("STOP");
        let send_lags = match sent {
            Ok(lags) => lags,
            Err(e) => {
                failures.push(format!("sending: {e:#}"));
                Vec::new()
            }
        };
        Ok(Outcome {
            latencies,
            send_lags,
            send_secs,
            failures,
        })
    })
}

/// Write requests 0..total at their due times; returns the send lag of each write batch (µs).
fn send_all(
    conns: &[BlockingConnection],
    schedule: &Schedule,
    total: u64,
    sessions: usize,
    totals: &Totals,
) -> anyhow::Result<Vec<u32>> {
    let n = conns.len() as u64;
    let mut bufs: Vec<BytesMut> = conns
        .iter()
        .map(|_| BytesMut::with_capacity(4096))
        .collect();
    let mut counts = vec![0u64; conns.len()];
    let mut lags = Vec::new();
    let mut k = 0u64;
    while k < total {
        let now = Instant::now();
        let next = schedule.due(k);
        if next > now {
            std::thread::sleep(next - now);
            continue;
        }
        let first = k;
        while k < total && schedule.due(k) <= now {
            let c = (k % n) as usize;
            let session = (k / n) as usize % sessions;
            put_request(&mut bufs[c], &conns[c].templates[session], k);
            counts[c] += 1;
            k += 1;
        }
        for (c, conn) in conns.iter().enumerate() {
            if counts[c] == 0 {
                continue;
            }
            // `&TcpStream` writes; a full socket buffer blocks here, and the requests due
            // meanwhile are charged the wait through their intended times.
            (&conn.writer)
                .write_all(&bufs[c])
                .with_context(|| format!("writing on connection {c}"))?;
            conn.sent.fetch_add(counts[c], Ordering::Release);
            totals.sent.fetch_add(counts[c], Ordering::Relaxed);
            bufs[c].clear();
            counts[c] = 0;
        }
        let lag = schedule.due(first).elapsed().as_micros();
        lags.push(lag.min(u32::MAX as u128) as u32);
    }
    Ok(lags)
}

/// Read one connection's answers until every request it was sent is answered after sending has
/// ended, or the drain time runs out. Returns the latencies (µs) from the intended send times.
fn read_answers(
    conn: &BlockingConnection,
    schedule: Schedule,
    sending_done: &AtomicBool,
    totals: &Totals,
) -> anyhow::Result<Vec<u32>> {
    let mut codec = conn.codec.clone();
    let mut buf = conn.read_buf.clone();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut latencies = Vec::new();
    let mut answered = 0u64;
    let mut drain_deadline: Option<Instant> = None;
    let mut arrived = Instant::now();
    loop {
        while let Some(body) = codec.decode(&mut buf)? {
            match classify(&body) {
                Some((id, failed)) if id < SETUP_ID => {
                    answered += 1;
                    totals.answered.fetch_add(1, Ordering::Relaxed);
                    if failed {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let us = arrived
                        .saturating_duration_since(schedule.due(id))
                        .as_micros();
                    latencies.push(us.min(u32::MAX as u128) as u32);
                }
                Some(_) => {}
                None => {
                    totals.notifications.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if sending_done.load(Ordering::Acquire) {
            if answered >= conn.sent.load(Ordering::Acquire) {
                return Ok(latencies);
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN);
            if Instant::now() >= deadline {
                return Ok(latencies);
            }
        }
        match (&conn.reader).read(&mut chunk) {
            Ok(0) => anyhow::bail!("connection closed by the server"),
            Ok(n) => {
                arrived = Instant::now();
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading answers"),
        }
    }
}
