//! Broken upstreams for the fault-injection tests (`tests/faults_*.rs`): a killable upstream in
//! its own process (`killable_upstream.py`, SIGKILLed and restarted on the same port), servers
//! that answer half an HTTP response or half a JSON-RPC frame and close, a relay that throttles
//! what an upstream sends, and metric reads from a running binary's admin listener.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::upstream::{serve_streams, Mock};
use super::{client, metric_value};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/killable_upstream.py"
);

/// Which protocol a [`ChildUpstream`] speaks.
#[derive(Clone, Copy)]
pub enum Speaks {
    Http,
    JsonRpc,
}

/// One life of `killable_upstream.py`: a separate process on 127.0.0.1, counting the requests
/// it saw (probes apart).
pub struct ChildUpstream {
    pub name: String,
    pub addr: SocketAddr,
    speaks: Speaks,
    child: Child,
    hits: Arc<AtomicU64>,
    probes: Arc<AtomicU64>,
}

impl ChildUpstream {
    /// Start on a free port.
    pub async fn start(speaks: Speaks, name: &str) -> ChildUpstream {
        ChildUpstream::start_on(speaks, name, 0).await
    }

    /// Start on `port` (0: any free one).
    async fn start_on(speaks: Speaks, name: &str, port: u16) -> ChildUpstream {
        let mode = match speaks {
            Speaks::Http => "http",
            Speaks::JsonRpc => "jsonrpc",
        };
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .args([mode, name, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3 killable_upstream.py");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the child upstream says where it listens")
            .expect("read stdout")
            .expect("a first line");
        let bound: u16 = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let (hits, probes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (h, p) = (hits.clone(), probes.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                match line.as_str() {
                    "probe" => p.fetch_add(1, Ordering::SeqCst),
                    _ => h.fetch_add(1, Ordering::SeqCst),
                };
            }
        });
        ChildUpstream {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], bound)),
            speaks,
            child,
            hits,
            probes,
        }
    }

    /// `(name, addr)`, as the config helpers take upstreams.
    pub fn member(&self) -> (String, SocketAddr) {
        (self.name.clone(), self.addr)
    }

    /// Requests this life received, probes apart.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Health probes this life received.
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::SeqCst)
    }

    /// SIGKILL the process and reap it: the kernel closes its sockets, nothing is flushed.
    pub async fn sigkill(&mut self) {
        self.child.start_kill().expect("SIGKILL the child upstream");
        self.child.wait().await.expect("reap the child upstream");
    }

    /// A new process on the same port (counters start from zero).
    pub async fn restart(&mut self) {
        let next = ChildUpstream::start_on(self.speaks, &self.name, self.addr.port()).await;
        *self = next;
    }
}

/// An HTTP upstream that reads a request, sends `reply` (part of a response) and closes.
pub async fn answers_then_closes(reply: &'static [u8]) -> Mock {
    serve_streams(move |mut stream| async move {
        let mut buf = [0u8; 4096];
        if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
            let _ = stream.write_all(reply).await;
        }
    })
    .await
}

/// Half a response head (`HTTP/1.1 200 OK`, then part of a header line), then close.
pub const HALF_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Le";

/// A whole head announcing 1,000 body bytes, 14 of them, then close.
pub const HALF_BODY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nthe first half";

/// Half a JSON-RPC frame: a header announcing 200 bytes and 12 of them, then close.
pub const HALF_FRAME: &[u8] = b"Content-Length: 200\r\n\r\n{\"jsonrpc\":";

/// A relay to `target` that forwards what the client sends at once and what `target` answers
/// at `bytes_per_sec` (in tenths of a second): a slow link without a network namespace.
pub async fn throttled(target: SocketAddr, bytes_per_sec: usize) -> Mock {
    let tick = Duration::from_millis(100);
    let per_tick = (bytes_per_sec / 10).max(1);
    serve_streams(move |client| async move {
        let Ok(upstream) = TcpStream::connect(target).await else {
            return;
        };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut up_read, mut up_write) = upstream.into_split();
        let forward = async {
            let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
            let _ = up_write.shutdown().await;
        };
        let back = async {
            let mut buf = vec![0u8; per_tick];
            loop {
                match up_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
                tokio::time::sleep(tick).await;
            }
            let _ = client_write.shutdown().await;
        };
        tokio::join!(forward, back);
    })
    .await
}

/// The binary's `/metrics` text from its admin listener.
pub async fn scrape(admin: SocketAddr) -> String {
    let reply = client::get(admin, "/metrics", &[]).await;
    assert_eq!(reply.status, 200, "GET /metrics");
    reply.body
}

/// One sample of the binary's metrics (0 when the series does not exist yet).
pub async fn sample(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&scrape(admin).await, name, labels).unwrap_or(0.0)
}

/// Wait until the sample `name{labels}` equals `want` (at most `secs` seconds).
pub async fn until_sample(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
    secs: u64,
) {
    let what = format!("{name}{labels:?} == {want}");
    let mut last = f64::NAN;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        last = sample(admin, name, labels).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not true within {secs}s: {what} (last {last})");
}
