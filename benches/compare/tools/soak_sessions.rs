//! `soak-sessions`: drives a million (or `--sessions`) session lifecycles through a running
//! sessiongate JSON-RPC listener — `session.create` with an explicit id, `session.resume`, then
//! `session.delete` — `--depth` sessions in flight on each of `--conns` pipelined connections,
//! and watches the proxy for leaks while it does: the proxy's RSS and open fds every second
//! (`/proc/PID/status`, `/proc/PID/fd`), a least-squares RSS slope over the second half of the
//! run, and `/metrics` at the half-way point and at the end (pinned sessions, live sessions, the
//! number of series in the exposition). Prints `PROGRESS` lines, a final `RESULT {json}`, writes
//! the samples as CSV with `--csv`, and fails when a request failed or a bound was crossed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use futures_util::StreamExt;
use sessiongate::wire::codec::{parse_frame, FrameCodec, FrameStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use crate::jsonrpc_load::{classify, frame};
use crate::{loopback, say};

/// The three requests of one session's life, in order; a request's id is `session * 4 + step`.
const STEPS: [&str; 3] = ["session.create", "session.resume", "session.delete"];
/// Error messages kept for the report (the count is kept for all of them).
const KEPT_ERRORS: usize = 5;

#[derive(clap::Args)]
pub struct Args {
    /// The proxy's JSON-RPC listener.
    #[arg(long)]
    addr: String,
    /// The proxy's admin listener (`/metrics`).
    #[arg(long)]
    admin: String,
    /// The proxy's pid: RSS and fds are read from `/proc/PID`.
    #[arg(long)]
    proxy_pid: u32,
    /// Session lifecycles (create, resume, delete) in total.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u64,
    /// Client connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Sessions in flight per connection (each has one request outstanding at a time).
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Start no new session after this long; the ones in flight finish.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
    /// Prefix of the session ids, so runs against a long-lived fleet do not collide.
    #[arg(long, default_value = "soak")]
    run_id: String,
    /// Write the samples (`secs,sessions_done,rss_kib,fds`) here.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Fail when RSS grows more than this over the second half of the run (fitted line).
    #[arg(long, default_value_t = 50.0)]
    max_growth_mib: f64,
    /// Fail when more sessions than this are still pinned or live at the end.
    #[arg(long, default_value_t = 0)]
    max_live_at_end: u64,
    /// Fail when the exposition has more series than this many more at the end than half-way.
    #[arg(long, default_value_t = 50)]
    max_series_growth: i64,
}

#[derive(Default)]
struct Totals {
    /// Sessions handed out (the next session number).
    started: AtomicU64,
    /// Sessions whose delete was answered.
    done: AtomicU64,
    /// Failed answers per step.
    errors: [AtomicU64; 3],
    notifications: AtomicU64,
    kept_errors: Mutex<Vec<String>>,
}

#[derive(Clone, Copy)]
struct Sample {
    secs: f64,
    done: u64,
    rss_kib: u64,
    fds: u64,
}

/// What one `/metrics` scrape says about the bounded tables.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Scrape {
    series: i64,
    pinned_sessions: i64,
    sessions_live: i64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let target = loopback(&args.addr)?;
    let admin = loopback(&args.admin)?;
    anyhow::ensure!(args.conns > 0 && args.depth > 0 && args.sessions > 0);
    let args = Arc::new(args);
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let stop_starting = started + Duration::from_secs(args.max_secs);
    let before = scrape(admin).await.context("first /metrics scrape")?;
    let rss_before = rss_kib(args.proxy_pid)?;

    let mut tasks = Vec::new();
    for _ in 0..args.conns {
        let (args, totals) = (args.clone(), totals.clone());
        tasks.push(tokio::spawn(async move {
            connection(target, &args, &totals, stop_starting).await
        }));
    }
    let load = futures_util::future::join_all(tasks);
    tokio::pin!(load);

    // Sample once a second until every connection is done; scrape /metrics once half-way.
    let mut samples = Vec::new();
    let mut half_way: Option<Scrape> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let results = loop {
        tokio::select! {
            results = &mut load => break results,
            _ = tick.tick() => {
                let done = totals.done.load(Ordering::Relaxed);
                let sample = Sample {
                    secs: started.elapsed().as_secs_f64(),
                    done,
                    rss_kib: rss_kib(args.proxy_pid)?,
                    fds: fd_count(args.proxy_pid),
                };
                samples.push(sample);
                if half_way.is_none() && done >= args.sessions / 2 {
                    half_way = Some(scrape(admin).await.context("half-way /metrics scrape")?);
                }
                if samples.len() % 10 == 0 {
                    say(format_args!(
                        "PROGRESS secs={:.0} sessions={done} rss_kib={} fds={}",
                        sample.secs, sample.rss_kib, sample.fds
                    ));
                }
            }
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(e.to_string()),
        }
    }
    samples.push(Sample {
        secs,
        done: totals.done.load(Ordering::Relaxed),
        rss_kib: rss_kib(args.proxy_pid)?,
        fds: fd_count(args.proxy_pid),
    });
    let end = scrape(admin).await.context("last /metrics scrape")?;
    let half_way = half_way.unwrap_or(end);
    if let Some(path) = &args.csv {
        write_csv(path, &samples).with_context(|| format!("writing {}", path.display()))?;
    }

    // The second half of the run, by time: the allocator has reached its working set by then.
    let second_half: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.secs >= secs / 2.0)
        .collect();
    let per_session = slope(
        second_half
            .iter()
            .map(|s| (s.done as f64, s.rss_kib as f64)),
    );
    let per_sec = slope(second_half.iter().map(|s| (s.secs, s.rss_kib as f64)));
    let (first, last) = (second_half.first(), second_half.last());
    let span_secs = match (first, last) {
        (Some(a), Some(b)) => b.secs - a.secs,
        _ => 0.0,
    };
    let fitted_growth_kib = per_sec * span_secs;
    let done = totals.done.load(Ordering::Relaxed);
    let errors: Vec<u64> = totals
        .errors
        .iter()
        .map(|e| e.load(Ordering::Relaxed))
        .collect();
    let error_total: u64 = errors.iter().sum();
    let peak_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);

    let mut verdicts = Vec::new();
    if error_total > 0 || !failures.is_empty() {
        verdicts.push(format!(
            "{error_total} failed answers, {} failed connections",
            failures.len()
        ));
    }
    if fitted_growth_kib > args.max_growth_mib * 1024.0 {
        verdicts.push(format!(
            "RSS grew {:.1} MiB over the second half (bound {} MiB)",
            fitted_growth_kib / 1024.0,
            args.max_growth_mib
        ));
    }
    let live_at_end = end.pinned_sessions.max(end.sessions_live);
    if live_at_end > args.max_live_at_end as i64 {
        verdicts.push(format!(
            "{live_at_end} sessions still pinned/live at the end (bound {})",
            args.max_live_at_end
        ));
    }
    if end.series - half_way.series > args.max_series_growth {
        verdicts.push(format!(
            "the exposition grew from {} to {} series in the second half (bound +{})",
            half_way.series, end.series, args.max_series_growth
        ));
    }
    let result = serde_json::json!({
        "sessions_requested": args.sessions,
        "sessions_done": done,
        "complete": done == args.sessions,
        "conns": args.conns,
        "depth": args.depth,
        "secs": secs,
        "sessions_per_sec": done as f64 / secs,
        "requests_per_sec": 3.0 * done as f64 / secs,
        "errors": { "create": errors[0], "resume": errors[1], "delete": errors[2] },
        "error_samples": *totals.kept_errors.lock().unwrap(),
        "notifications": totals.notifications.load(Ordering::Relaxed),
        "failures": failures,
        "rss_kib_before": rss_before,
        "rss_kib_end": samples.last().map(|s| s.rss_kib),
        "rss_kib_peak": peak_rss,
        "fds_peak": peak_fds,
        "fds_end": samples.last().map(|s| s.fds),
        "slope_kib_per_100k_sessions": per_session * 100_000.0,
        "slope_kib_per_min": per_sec * 60.0,
        "second_half_secs": span_secs,
        "second_half_fitted_growth_kib": fitted_growth_kib,
        "second_half_rss_kib": [first.map(|s| s.rss_kib), last.map(|s| s.rss_kib)],
        "samples": samples.len(),
        "metrics_before": before,
        "metrics_half_way": half_way,
        "metrics_end": end,
        "pass": verdicts.is_empty(),
        "verdicts": verdicts,
    });
    say(format_args!("RESULT {result}"));
    anyhow::ensure!(verdicts.is_empty(), "soak failed: {}", verdicts.join("; "));
    Ok(())
}

/// The next session number to start, or `None` once all are handed out or time is up.
fn take(args: &Args, totals: &Totals, stop_starting: Instant) -> Option<u64> {
    if Instant::now() >= stop_starting {
        return None;
    }
    let n = totals.started.fetch_add(1, Ordering::Relaxed);
    (n < args.sessions).then_some(n)
}

fn push(out: &mut BytesMut, args: &Args, session: u64, step: usize) {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{},"method":"{}","params":{{"sessionId":"{}-{session}"}}}}"#,
        session * 4 + step as u64,
        STEPS[step],
        args.run_id
    );
    frame(out, body.as_bytes());
}

/// One pipelined connection: keeps `depth` sessions going, each one request at a time through
/// its three steps, until no new session may start and the last ones are deleted.
async fn connection(
    target: SocketAddr,
    args: &Args,
    totals: &Totals,
    stop_starting: Instant,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::with_capacity(read, FrameCodec::default(), 64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut in_flight = 0usize;
    for _ in 0..args.depth {
        let Some(n) = take(args, totals, stop_starting) else {
            break;
        };
        push(&mut out, args, n, 0);
        in_flight += 1;
    }
    write.write_all(&out).await?;
    out.clear();
    // Answers still missing this long after the last session may start are lost, not slow.
    let give_up = tokio::time::Instant::from_std(stop_starting) + Duration::from_secs(30);
    while in_flight > 0 {
        let body = match tokio::time::timeout_at(give_up, frames.next()).await {
            Err(_) => anyhow::bail!("{in_flight} answers still missing 30 s after the time bound"),
            Ok(None) => anyhow::bail!("connection closed by the server ({in_flight} in flight)"),
            Ok(Some(body)) => body?,
        };
        match classify(&body) {
            Some((id, failed)) => answered_step(
                args,
                totals,
                stop_starting,
                (id, failed, &body),
                &mut out,
                &mut in_flight,
            )?,
            None => {
                totals.notifications.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Write once no further whole frame waits in the read buffer, so writes batch (a
        // notification may be the last frame read: the check runs after every frame).
        let more = matches!(
            parse_frame(frames.read_buffer(), usize::MAX),
            Ok(FrameStatus::Complete { .. })
        );
        if !out.is_empty() && (!more || out.len() >= 32 * 1024) {
            write.write_all(&out).await?;
            out.clear();
        }
    }
    Ok(())
}

/// The answer to request `id`: count a failure, send the session's next step, or start the next
/// session once a delete is answered.
fn answered_step(
    args: &Args,
    totals: &Totals,
    stop_starting: Instant,
    (id, failed, body): (u64, bool, &[u8]),
    out: &mut BytesMut,
    in_flight: &mut usize,
) -> anyhow::Result<()> {
    let (session, step) = (id / 4, (id % 4) as usize);
    anyhow::ensure!(
        step < STEPS.len(),
        "an answer with an id we never sent: {id}"
    );
    if failed {
        totals.errors[step].fetch_add(1, Ordering::Relaxed);
        let mut kept = totals.kept_errors.lock().unwrap();
        if kept.len() < KEPT_ERRORS {
            kept.push(String::from_utf8_lossy(body).into_owned());
        }
    }
    if step + 1 < STEPS.len() {
        push(out, args, session, step + 1);
    } else {
        totals.done.fetch_add(1, Ordering::Relaxed);
        match take(args, totals, stop_starting) {
            Some(n) => push(out, args, n, 0),
            None => *in_flight -= 1,
        }
    }
    Ok(())
}

/// Resident set of a process in KiB (`VmRSS` in `/proc/PID/status`).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the proxy running?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Least-squares slope of y over x (0 with fewer than two distinct x).
fn slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let points: Vec<(f64, f64)> = points.collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn write_csv(path: &std::path::Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "secs,sessions_done,rss_kib,fds")?;
    for s in samples {
        writeln!(f, "{:.1},{},{},{}", s.secs, s.done, s.rss_kib, s.fds)?;
    }
    f.flush()
}

/// `GET /metrics` over HTTP/1.0 (so the body is not chunked) and count what bounds the tables.
async fn scrape(admin: SocketAddr) -> anyhow::Result<Scrape> {
    let mut conn = TcpStream::connect(admin).await?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: soak\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .context("/metrics did not answer within 10 s")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    let mut out = Scrape::default();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        out.series += 1;
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as i64
        };
        if line.starts_with("sessiongate_pinned_sessions") {
            out.pinned_sessions += value();
        } else if line.starts_with("sessiongate_sessions_live") {
            out.sessions_live += value();
        }
    }
    Ok(out)
}
