//! Upstream HTTP/1.1 connection reuse: per upstream, a stack of idle keep-alive connections
//! (hyper's low-level client), newest on top, bounded by `pool_max_idle_per_upstream` and closed
//! after `pool_idle_timeout`. A connection goes back on the stack when its response body has been
//! read to the end; one dropped mid-body is closed, as HTTP/1 cannot abandon a response.
//! `sessiongate_upstream_connections_active` counts open sockets exactly.
//!
//! Why not hyper-util's pooled client: every upstream already has a pool of its own, so that
//! client's keyed map (hashing the authority byte by byte on checkout and again on return) and
//! the task it spawns per response to return the connection cost about a tenth of the proxy's
//! instructions per request in the profile, for nothing this pool needs.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::{PoolConfig, UpstreamConfig};
use crate::metrics::Metrics;

/// Why forwarding to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: Arc<str>,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: Arc<str>, after: Duration },
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        addr: Arc<str>,
        source: hyper::Error,
    },
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

impl UpstreamError {
    /// No connection could be made (as opposed to one failing mid-request).
    pub fn is_connect(&self) -> bool {
        !matches!(self, UpstreamError::Request(_))
    }
}

/// One upstream's connections; cheap to clone (a reload keeps it when the address and pool
/// settings are unchanged, so warm connections survive).
#[derive(Clone)]
pub struct HttpPool(Arc<Inner>);

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPool")
            .field("addr", &self.0.addr)
            .field("idle", &self.0.idle().conns.len())
            .finish()
    }
}

struct Inner {
    addr: Arc<str>,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    idle: Mutex<IdleStack>,
    open: IntGauge,
}

#[derive(Default)]
struct IdleStack {
    conns: Vec<IdleConn>,
    /// A sweeper task is closing connections idle past the timeout.
    sweeping: bool,
}

struct IdleConn {
    sender: SendRequest<Incoming>,
    since: Instant,
}

impl HttpPool {
    pub fn new(pool: &PoolConfig, upstream: &UpstreamConfig, metrics: &Metrics) -> HttpPool {
        HttpPool(Arc::new(Inner {
            addr: Arc::from(upstream.addr.as_str()),
            connect_timeout: pool.connect_timeout,
            max_idle: pool.pool_max_idle_per_upstream,
            idle_timeout: pool.pool_idle_timeout,
            idle: Mutex::default(),
            open: metrics
                .upstream_connections_active
                .with_label_values(&[&pool.name, &upstream.name]),
        }))
    }

    /// Send `req` (origin-form URI, Host set) on an idle connection or a new one. A request
    /// that never reached an idle connection because it had just closed is sent again on a new
    /// one, so a keep-alive race with the upstream is not the client's error.
    pub async fn request(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let (mut sender, reused) = match self.checkout() {
            Some(sender) => (sender, true),
            None => (self.connect().await?, false),
        };
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                Some(req) if reused => {
                    sender = self.connect().await?;
                    sender.send_request(req).await?
                }
                _ => return Err(UpstreamError::Request(e.into_error())),
            },
        };
        // After a protocol switch the connection belongs to the tunnel, not the pool.
        let lease = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Lease {
            sender,
            pool: Arc::downgrade(&self.0),
        });
        Ok(resp.map(|body| PooledBody::new(body, lease)))
    }

    /// The most recently used idle connection that can take a request now, if any.
    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        loop {
            let conn = self.0.idle().conns.pop()?;
            // Not ready: closing, or still busy with the request body of an answer that came
            // early. Waiting for it could hold this request behind a slow client's upload, so
            // it is dropped (hyper closes it once done) and the next one tried.
            if conn.sender.is_ready() && conn.since.elapsed() < self.0.idle_timeout {
                return Some(conn.sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, UpstreamError> {
        let inner = &self.0;
        let addr = inner.addr.clone();
        let stream =
            match tokio::time::timeout(inner.connect_timeout, TcpStream::connect(&*addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
                Err(_) => {
                    let after = inner.connect_timeout;
                    return Err(UpstreamError::ConnectTimeout { addr, after });
                }
            };
        let _ = stream.set_nodelay(true);
        inner.open.inc();
        let io = CountedStream {
            stream,
            open: inner.open.clone(),
        };
        let (sender, conn) = http1::Builder::new()
            // One `send` per request, head and small body copied together, instead of a
            // `writev` of two: fewer instructions here and in the kernel (as HAProxy does).
            .writev(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, IdleStack> {
        // The lock guards plain pushes and pops; a panic while holding it cannot leave the
        // stack half-changed, so a poisoned lock is still usable.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(self: &Arc<Self>, sender: SendRequest<Incoming>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle();
        if idle.conns.len() >= self.max_idle {
            return;
        }
        idle.conns.push(IdleConn {
            sender,
            since: Instant::now(),
        });
        if !idle.sweeping {
            idle.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
    }
}

/// Close connections idle past the timeout, until the stack is empty or the pool is gone.
async fn sweep(pool: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle();
        idle.conns
            .retain(|c| c.since.elapsed() < pool.idle_timeout && !c.sender.is_closed());
        if idle.conns.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

/// A connection lent to one response.
struct Lease {
    sender: SendRequest<Incoming>,
    pool: Weak<Inner>,
}

impl Lease {
    fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(self.sender);
        }
    }
}

/// An upstream response body that returns its connection to the pool once read to the end.
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
    /// The session pin this response keeps alive while it streams.
    hold: Option<crate::sessions::PinHold>,
}

impl PooledBody {
    fn new(body: Incoming, lease: Option<Lease>) -> PooledBody {
        let mut body = PooledBody {
            body,
            lease,
            hold: None,
        };
        // An empty body (HEAD, 204, 304, `Content-Length: 0`) may never be polled.
        body.release_if_ended();
        body
    }

    /// Keep `hold` (a session's pin) until this body is dropped: a stream that stays open is
    /// the session's activity even when it sends nothing.
    pub fn hold_pin(&mut self, hold: crate::sessions::PinHold) {
        if !self.body.is_end_stream() {
            self.hold = Some(hold);
        }
    }

    fn release_if_ended(&mut self) {
        if self.body.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.give_back();
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => {
                if let Some(lease) = this.lease.take() {
                    lease.give_back();
                }
            }
            Some(Ok(_)) => this.release_if_ended(),
            // The connection is broken; dropping the lease closes it.
            Some(Err(_)) => this.lease = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream that decrements the open-connection gauge when dropped.
struct CountedStream {
    stream: TcpStream,
    open: IntGauge,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
}
