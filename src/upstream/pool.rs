//! The HTTP/2 path's upstream HTTP/1.1 connections: hyper's low-level client connections kept
//! on the upstream's idle stack ([`super::idle`]). A connection goes back on the stack when its
//! response body has been read to the end; one dropped mid-body is closed, as HTTP/1 cannot
//! abandon a response. `sessiongate_upstream_connections_active` counts open sockets exactly.
//!
//! Why not hyper-util's pooled client: every upstream already has a pool of its own, so that
//! client's keyed map (hashing the authority byte by byte on checkout and again on return) and
//! the task it spawns per response to return the connection cost about a tenth of the proxy's
//! instructions per request in the profile, for nothing this pool needs.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

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

use super::idle::{self, ConnectError, IdleStack};
use crate::config::{PoolConfig, UpstreamConfig};
use crate::metrics::Metrics;

/// Why forwarding to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
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
            .field("idle", &self.0.idle.len())
            .finish()
    }
}

struct Inner {
    addr: Arc<str>,
    connect_timeout: Duration,
    /// Kept while not closed; taken only when ready for a request.
    idle: Arc<IdleStack<SendRequest<Incoming>>>,
    open: IntGauge,
}

impl HttpPool {
    pub fn new(pool: &PoolConfig, upstream: &UpstreamConfig, metrics: &Metrics) -> HttpPool {
        HttpPool(Arc::new(Inner {
            addr: Arc::from(upstream.addr.as_str()),
            connect_timeout: pool.connect_timeout,
            idle: IdleStack::new(
                pool.pool_max_idle_per_upstream,
                pool.pool_idle_timeout,
                |sender| !sender.is_closed(),
            ),
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
            pool: Arc::downgrade(&self.0.idle),
        });
        Ok(resp.map(|body| PooledBody::new(body, lease)))
    }

    /// The most recently used idle connection that can take a request now, if any.
    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        // Not ready: closing, or still busy with the request body of an answer that came
        // early. Waiting for it could hold this request behind a slow client's upload, so it
        // is dropped (hyper closes it once done) and the next one tried.
        std::iter::from_fn(|| self.0.idle.pop()).find(|sender| sender.is_ready())
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, UpstreamError> {
        let inner = &self.0;
        let stream = idle::connect(&inner.addr, inner.connect_timeout).await?;
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
            .map_err(|source| UpstreamError::Handshake {
                addr: inner.addr.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A connection lent to one response.
struct Lease {
    sender: SendRequest<Incoming>,
    pool: Weak<IdleStack<SendRequest<Incoming>>>,
}

impl Lease {
    fn give_back(self) {
        if let Some(idle) = self.pool.upgrade() {
            idle.push(self.sender);
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
