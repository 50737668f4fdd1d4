//! `idle-conns`: open HTTP/1.1 keep-alive connections, send one request on each and read the
//! answer, then hold them idle. Connections are opened in steps (`--steps 1000,3000,9000`); after
//! each step it prints `HELD <n> closed=<k> failed=<f>` and, with `--stdin-control`, waits for a
//! line on stdin (the harness samples the proxy's RSS meanwhile) before the next step. Prints
//! `DONE` and closes everything at the end, on stdin EOF, or after `--max-secs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{loopback, say};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    addr: String,
    /// Connection counts to stop at, ascending; the last is the total.
    #[arg(long, value_delimiter = ',', default_value = "9000")]
    steps: Vec<usize>,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    parallel: usize,
    /// Header carrying the session key (each connection gets its own key).
    #[arg(long, default_value = "X-Session-Id")]
    header: String,
    /// Wait for a line on stdin after each step (otherwise hold `--settle-secs`).
    #[arg(long)]
    stdin_control: bool,
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Give up and close everything after this long.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let target = loopback(&args.addr)?;
    let hold = CancellationToken::new();
    let closed = Arc::new(AtomicU64::new(0));
    let mut failed = 0u64;
    let mut held = 0usize;
    let mut holders = JoinSet::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_secs);
    let work = async {
        let mut serial = 0usize;
        for &step in &args.steps {
            let mut opening = JoinSet::new();
            while held < step {
                // Keep `parallel` attempts going until the step is reached; failures are retried.
                while held + opening.len() < step && opening.len() < args.parallel {
                    let request = format!(
                        "GET /idle HTTP/1.1\r\nHost: bench\r\n{}: idle-{serial}\r\n\r\n",
                        args.header
                    );
                    opening.spawn(open(target, request));
                    serial += 1;
                }
                match opening.join_next().await {
                    Some(Ok(Ok(stream))) => {
                        held += 1;
                        let (hold, closed) = (hold.clone(), closed.clone());
                        holders.spawn(hold_idle(stream, hold, closed));
                    }
                    _ => {
                        failed += 1;
                        if failed > 1000 {
                            anyhow::bail!("too many failed connections ({failed})");
                        }
                    }
                }
            }
            say(format_args!(
                "HELD {held} closed={} failed={failed}",
                closed.load(Ordering::Relaxed)
            ));
            if args.stdin_control {
                if stdin.next_line().await?.is_none() {
                    break;
                }
            } else {
                tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
            }
        }
        anyhow::Ok(())
    };
    let outcome = tokio::time::timeout_at(deadline, work).await;
    say(format_args!(
        "DONE held={held} closed={} failed={failed}",
        closed.load(Ordering::Relaxed)
    ));
    hold.cancel();
    while holders.join_next().await.is_some() {}
    match outcome {
        Ok(r) => r,
        Err(_) => anyhow::bail!("gave up after --max-secs"),
    }
}

/// Connect, send one request, read one whole response (Content-Length or chunked).
async fn open(target: std::net::SocketAddr, request: String) -> anyhow::Result<TcpStream> {
    let mut stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "closed before the response");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                anyhow::ensure!(head.starts_with("http/1.1 2"), "not a 2xx: {head}");
                let body = buf.len() - end - 4;
                if let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                {
                    if body >= len {
                        return Ok(());
                    }
                } else if buf.ends_with(b"0\r\n\r\n") {
                    return Ok(());
                }
            }
        }
    })
    .await
    .context("response timed out")??;
    Ok(stream)
}

/// Keep the connection open until told to stop; count it if the server closes it first.
async fn hold_idle(mut stream: TcpStream, hold: CancellationToken, closed: Arc<AtomicU64>) {
    let mut byte = [0u8; 1];
    tokio::select! {
        _ = hold.cancelled() => {}
        r = stream.read(&mut byte) => {
            if matches!(r, Ok(0) | Err(_)) {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
